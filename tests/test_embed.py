"""Embeddings (API and CLI), shipped encoders, the linear probe, jax.export artifacts,
and quiet command-line logs — on a runlocal pre-training and a runlocal `ensemble`."""

import functools
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf

import coughjax
from configs import downstream as downstream_configs
from configs import pretrain as pretrain_configs
from coughjax import audio
from coughjax import baselines
from coughjax import embed
from coughjax import encoders
from coughjax import export
from coughjax import infer
from coughjax import inputs
from coughjax import models
from coughjax import predict
from coughjax import probe
from coughjax.data import mask_key
from coughjax.data import synthetic
from coughjax.models import transformer
from coughjax.train import run
from tests.conftest import REPO

INFO_LINE = re.compile(r"^I\d{4} ", re.M)  # absl's INFO prefix


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{"pretrain": runlocal transformer_m50 workdir, "ensemble": runlocal `ensemble`
  (two Transformer-CP branches from it, DS masking 50 % also at inference)}."""
  root = tmp_path_factory.mktemp("embed_runs")
  pre = root / "runs" / "transformer_m50_runlocal"
  config = pretrain_configs.get_config("transformer_m50,runlocal")
  config.num_epochs = 1
  config.lock()
  run.run(config, str(pre))
  config = downstream_configs.get_config("ensemble,runlocal")
  config.num_runs, config.num_epochs = 1, 1
  config.encoder_a.checkpoint = config.encoder_b.checkpoint = str(pre)
  config.lock()
  run.run(config, str(root / "ensemble"))
  return {"pretrain": pre, "ensemble": root / "ensemble"}


def _flac(path, address):
  sf.write(path, synthetic.render(address, 16000), 16000)
  return str(path)


def _cli(module, *args, check=True):
  proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                        capture_output=True, text=True, timeout=600, check=False)
  if check and proc.returncode:
    raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def test_import_is_light_and_api_is_lazy():
  code = ("import sys, coughjax; assert 'jax' not in sys.modules, 'jax imported'; "
          "f = coughjax.load_encoder; assert 'jax' in sys.modules; print(f.__module__)")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                       text=True, check=True, timeout=300)
  assert out.stdout.strip() == "coughjax.embed"
  with pytest.raises(AttributeError, match="load_everything"):
    coughjax.load_everything  # pylint: disable=pointless-statement


def test_embed_cli_writes_what_the_api_computes(runs, tmp_path):
  files = [_flac(tmp_path / "a.flac", "synthetic://1/0/cough-heavy"),
           _flac(tmp_path / "b.flac", "synthetic://1/1/cough-shallow")]
  out = tmp_path / "emb.npz"
  proc = _cli("coughjax.embed", f"--workdir={runs['pretrain']}", f"--output={out}", *files)
  assert not INFO_LINE.search(proc.stderr), proc.stderr
  saved = np.load(out)
  encoder = coughjax.load_encoder(runs["pretrain"])
  assert saved["embeddings"].shape == (2, encoder.dim)
  api = encoder.embed_files(files)
  np.testing.assert_allclose(saved["embeddings"], api.recordings, atol=1e-6)
  np.testing.assert_allclose(saved["clip_embeddings"], api.clips, atol=1e-6)
  assert list(saved["paths"]) == files and list(saved["labels"]) == [-1, -1]
  # A recording's embedding is the mean of its clips', and equals the waveform API's.
  for i, path in enumerate(files):
    rows = saved["clip_recording"] == i
    np.testing.assert_allclose(saved["clip_embeddings"][rows].mean(0),
                               saved["embeddings"][i], atol=1e-6)
    wave = audio.load(path, 16000)
    np.testing.assert_allclose(encoder.embed(wave, 16000), api.recordings[i], atol=1e-6)
    np.testing.assert_allclose(encoder.embed_clips(wave, 16000), api.clips[rows], atol=1e-6)
  # h is the encoder output, not the projection: d = the encoder's d_model (64),
  # and repeated calls give the same numbers (no dropout, no masking).
  assert encoder.dim == 64 and not encoder.masked
  np.testing.assert_array_equal(encoder.embed_files(files[::-1]).recordings, api.recordings[::-1])


def test_bad_files_are_listed_and_the_rest_embedded(runs, tmp_path):
  good = _flac(tmp_path / "good.flac", "synthetic://1/2/cough-heavy")
  short = tmp_path / "short.wav"
  sf.write(short, np.full(800, 0.1, np.float32), 16000)
  missing = tmp_path / "missing.wav"
  encoder = coughjax.load_encoder(runs["pretrain"])
  out = encoder.embed_files([missing, good, short])
  assert out.names == [good] and out.recordings.shape == (1, encoder.dim)
  assert [p for p, _ in out.errors] == [str(missing), str(short)]
  assert "not found" in out.errors[0][1] and "too short" in out.errors[1][1]
  with pytest.raises(audio.AudioError, match="my-recording: audio is silent"):
    encoder.embed(np.zeros(16000, np.float32), 16000, name="my-recording")
  proc = _cli("coughjax.embed", f"--workdir={runs['pretrain']}",
              f"--output={tmp_path / 'e.npz'}", good, missing, check=False)
  assert proc.returncode != 0 and str(missing) in proc.stderr
  assert list(np.load(tmp_path / "e.npz")["paths"]) == [good]
  with pytest.raises(FileNotFoundError, match="not a shipped encoder"):
    coughjax.load_encoder(tmp_path / "nowhere")


def test_int16_waveform_scores_as_its_float_version(runs, tmp_path):
  """What scipy.io.wavfile.read gives (int16) scores as soundfile's floats."""
  path = tmp_path / "a.wav"
  sf.write(path, synthetic.render("synthetic://1/7/cough-heavy", 16000), 16000,
           subtype="PCM_16")
  as_float, rate = sf.read(path, dtype="float32")
  as_int16, _ = sf.read(path, dtype="int16")
  clf = coughjax.load_classifier(runs["ensemble"])
  p = clf.predict(as_float, rate)
  assert abs(clf.predict(as_int16, rate) - p) <= 1e-5
  assert clf.predict_files(str(path)) == [(str(path), pytest.approx(p, abs=1e-6))]
  # Channels first ([2, N], as torchaudio gives it) is the same recording.
  stereo = np.stack([as_int16, as_int16])
  assert abs(clf.predict(stereo, rate) - p) <= 1e-5
  encoder = coughjax.load_encoder(runs["pretrain"])
  np.testing.assert_allclose(encoder.embed(as_int16, rate), encoder.embed(as_float, rate),
                             atol=1e-6)
  with pytest.raises(audio.AudioError, match="^mine: sample_rate must be a positive"):
    clf.predict(as_float, 0, name="mine")
  with pytest.raises(audio.AudioError, match="^mine: bool arrays are not audio"):
    encoder.embed_clips(as_float > 0, rate, name="mine")


def test_one_path_as_a_str_is_one_file(runs, tmp_path):
  f = _flac(tmp_path / "a.flac", "synthetic://1/8/cough-heavy")
  encoder = coughjax.load_encoder(runs["pretrain"])
  for one in (f, tmp_path / "a.flac"):
    out = encoder.embed_files(one)
    assert out.names == [f] and out.errors == []
  assert [p for p, _ in coughjax.load_classifier(runs["ensemble"]).predict_files(f)] == [f]


def test_non_finite_outputs_are_errors_naming_the_input(runs, tmp_path):
  good = coughjax.load_encoder(runs["pretrain"])
  params = jax.tree.map(np.array, good.params)  # writable copies
  jax.tree.leaves(params)[0][...] = np.nan
  broken = embed.Encoder(good.config, params, good.spec, source="broken")
  wave = synthetic.render("synthetic://1/9/cough-heavy", 16000)
  with pytest.raises(FloatingPointError, match="^mine: the model's output is NaN/inf"):
    broken.embed(wave, 16000, name="mine")
  f = _flac(tmp_path / "a.flac", "synthetic://1/9/cough-heavy")
  out = broken.embed_files([f])
  assert out.names == [] and out.recordings.shape == (0, good.dim)
  assert out.errors == [(f, inputs.NONFINITE)]
  recs = synthetic.manifest(2, sounds=("cough-heavy",))
  kept, out = embed.embed_records(broken, recs, workers=1, progress=False)
  assert kept == [] and out.errors == [(r.path, inputs.NONFINITE) for r in recs]
  # A classifier whose second file's clips come out NaN: the first is still scored.
  clf = coughjax.load_classifier(runs["ensemble"])
  g = _flac(tmp_path / "b.flac", "synthetic://1/10/cough-heavy")
  live = clf._fn  # pylint: disable=protected-access

  def nan_for_b(x, keys, clip):
    p = np.array(live(x, keys, clip))
    p[np.all(keys == inputs.cut([inputs.file_features(g, clf.spec.features)],
                                clf.spec).rec_keys[0], axis=1)] = np.nan
    return p

  clf._fn = nan_for_b  # pylint: disable=protected-access
  (_, pf), (_, pg) = clf.predict_files([f, g])
  assert isinstance(pf, float) and pg == f"error: {inputs.NONFINITE}"
  with pytest.raises(FloatingPointError, match="^b: the model's output is NaN/inf"):
    clf.predict(audio.load(g), 16000, name="b")


def test_masked_branch_embeddings_are_what_the_classifier_head_sees(runs, tmp_path):
  wd = runs["ensemble"]
  clf = coughjax.load_classifier(wd)
  files = [_flac(tmp_path / f"{i}.flac", f"synthetic://1/{i}/cough-heavy") for i in range(3)]
  feats = [inputs.file_features(f, clf.spec.features) for f in files]
  clips = inputs.cut(feats, clf.spec, files)
  live = clf.clip_probabilities(clips)
  h = [coughjax.load_encoder(wd, branch=i, mask=True).embed_features(feats).clips
       for i in (0, 1)]
  fc = clf.params["fc"]
  logits = np.concatenate(h, axis=1) @ np.asarray(fc["kernel"])[:, 0] + np.asarray(fc["bias"])[0]
  np.testing.assert_allclose(1 / (1 + np.exp(-logits)), live, atol=1e-5)
  # Masking is off unless asked for, and then it changes the embeddings.
  plain = coughjax.load_encoder(wd, branch=0).embed_features(feats).clips
  assert np.max(np.abs(plain - h[0])) > 1e-4
  with pytest.raises(ValueError, match="branch 2 out of range"):
    coughjax.load_encoder(wd, branch=2)


def test_classifier_scores_many_files_as_one_by_one(runs, tmp_path):
  clf = coughjax.load_classifier(runs["ensemble"])
  files = [_flac(tmp_path / f"{i}.flac", f"synthetic://3/{i}/cough-shallow") for i in range(5)]
  many = dict(clf.predict_files(files + [str(tmp_path / "none.wav")]))
  assert many[str(tmp_path / "none.wav")].startswith("error: ")
  for f in files:
    assert many[f] == pytest.approx(clf.predict(audio.load(f, 16000), 16000), abs=1e-6)
  # Any iterable of paths, an iterator included (read once).
  assert clf.predict_files(iter(files)) == [(f, many[f]) for f in files]


def test_predict_cli_is_quiet_unless_asked(runs, tmp_path):
  f = _flac(tmp_path / "a.flac", "synthetic://1/0/cough-heavy")
  quiet = _cli("coughjax.predict", f"--workdir={runs['ensemble']}", f)
  assert not INFO_LINE.search(quiet.stderr), quiet.stderr
  assert quiet.stdout.startswith(f + "\t")
  loud = _cli("coughjax.predict", f"--workdir={runs['ensemble']}", "--verbosity=0", f)
  assert INFO_LINE.search(loud.stderr)  # the logs are there when asked for


_FRESH = r"""
import json, sys
import numpy as np
import jax
blob = open(sys.argv[1], "rb").read()
exported = jax.export.deserialize(bytearray(blob))
data = np.load(sys.argv[2])
args = [data[k] for k in json.loads(sys.argv[3])]
out = np.asarray(exported.call(*args))
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("coughjax", "flax", "optax"))
print(json.dumps({"max_diff": float(np.max(np.abs(out - data["expected"]))),
                  "shape": list(out.shape), "leaked": leaked}))
"""


def _run_fresh(folder, arrays, names, tmp_path):
  np.savez(tmp_path / "io.npz", **arrays)
  proc = subprocess.run([sys.executable, "-c", _FRESH, str(folder / export.PROGRAM),
                         str(tmp_path / "io.npz"), json.dumps(names)],
                        cwd=tmp_path, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": ""}, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_exported_classifier_reproduces_the_live_one(runs, tmp_path):
  clf = coughjax.load_classifier(runs["ensemble"])
  assert all(infer.inference_mask_rate(e) == 0.5 for e in clf.model.encoders)
  folder = export.export_classifier(runs["ensemble"], tmp_path / "clf")
  meta = json.loads((folder / export.SIDECAR).read_text())
  assert [i["shape"] for i in meta["inputs"]] == [["b", 96, 64], ["b", 2], ["b"]]
  assert meta["features"]["nfilt"] == 64 and meta["features"]["sample_rate"] == 16000
  files = [_flac(tmp_path / f"{i}.flac", f"synthetic://5/{i}/cough-heavy") for i in range(2)]
  feats = [inputs.file_features(f, clf.spec.features) for f in files]
  clips = inputs.cut(feats, clf.spec, files)
  live = np.asarray(infer.probabilities(clf.model, clf.params, clips.x, clips.rec_keys,
                                        clips.clip))
  assert len(live) not in (8, 16)  # a batch size the live path never compiled
  report = _run_fresh(folder, {"x": clips.x, "rec_keys": clips.rec_keys,
                               "clip_index": clips.clip.astype(np.int32), "expected": live},
                      ["x", "rec_keys", "clip_index"], tmp_path)
  assert report["leaked"] == [] and report["shape"] == [len(live)]
  assert report["max_diff"] < 1e-5
  # The masks are part of the program: other keys give other outputs.
  exported, _ = export.load(folder)
  other = np.asarray(exported.call(clips.x, clips.rec_keys + 1, clips.clip.astype(np.int32)))
  assert np.max(np.abs(other - live)) > 1e-4


def test_exported_encoder_and_cli(runs, tmp_path):
  proc = _cli("coughjax.export", f"--workdir={runs['pretrain']}", f"--output={tmp_path / 'enc'}",
              "--batch=4")
  assert "encoder" in proc.stdout and not INFO_LINE.search(proc.stderr)
  encoder = coughjax.load_encoder(runs["pretrain"])
  f = _flac(tmp_path / "a.flac", "synthetic://1/4/breathing-deep")
  x = inputs.cut([inputs.file_features(f, encoder.spec.features)], encoder.spec).x
  x = np.resize(x, (4,) + x.shape[1:])  # the fixed batch of 4
  expected = np.asarray(infer.embeddings(encoder.module, encoder.params, x))
  report = _run_fresh(tmp_path / "enc", {"x": x, "expected": expected}, ["x"], tmp_path)
  assert report["leaked"] == [] and report["shape"] == [4, encoder.dim]
  assert report["max_diff"] < 1e-5


def test_shipped_encoder_loads_offline(runs, tmp_path, monkeypatch):
  monkeypatch.setenv("COUGHJAX_ENCODERS", str(tmp_path / "shipped"))
  assert encoders.names() == []
  encoders.ship(runs["pretrain"], "tiny_m50", "A runlocal test encoder.")
  assert encoders.names() == ["tiny_m50"]
  card = (tmp_path / "shipped" / "tiny_m50.md").read_text()
  assert "A runlocal test encoder." in card and "d = 64" in card
  shipped = coughjax.load_encoder("tiny_m50")
  live = coughjax.load_encoder(runs["pretrain"])
  wave = synthetic.render("synthetic://2/0/cough-heavy", 16000)
  np.testing.assert_array_equal(shipped.embed(wave, 16000), live.embed(wave, 16000))
  assert shipped.spec == live.spec
  with pytest.raises(ValueError, match="card text is empty"):
    encoders.ship(runs["pretrain"], "other", "  ")
  with pytest.raises(FileNotFoundError, match="shipped: tiny_m50"):
    coughjax.load_encoder("tiny_m25")
  # The CLI writes the same files.
  (tmp_path / "card.md").write_text("Card.")
  _cli("coughjax.encoders", f"--workdir={runs['pretrain']}", "--name=cli_m50",
       f"--card={tmp_path / 'card.md'}", f"--folder={tmp_path / 'shipped'}")
  assert encoders.names() == ["cli_m50", "tiny_m50"]


def test_shipped_encoder_with_overwritten_bytes_fails_naming_the_file(tmp_path,
                                                                      monkeypatch):
  name = "transformer_m50_real"
  real = encoders.read(name)  # the shipped files match their recorded digest
  assert real.meta["params_sha256"] == encoders.params_digest(
      (encoders.directory() / f"{name}.msgpack").read_bytes())
  for suffix in (".json", ".msgpack"):
    (tmp_path / f"{name}{suffix}").write_bytes(
        (encoders.directory() / f"{name}{suffix}").read_bytes())
  monkeypatch.setenv("COUGHJAX_ENCODERS", str(tmp_path))
  params = tmp_path / f"{name}.msgpack"
  blob = bytearray(params.read_bytes())
  blob[len(blob) // 2:len(blob) // 2 + 12] = b"\xff" * 12
  params.write_bytes(bytes(blob))
  with pytest.raises(ValueError, match=f"^{re.escape(str(params))}: SHA-256 .* is not the "
                                       f".* recorded in .*{name}.json: the parameters are "
                                       "damaged"):
    coughjax.load_encoder(name)
  settings = tmp_path / f"{name}.json"
  meta = json.loads(settings.read_text())
  del meta["params_sha256"]
  settings.write_text(json.dumps(meta))
  with pytest.raises(ValueError, match=f"^{re.escape(str(settings))}: shipped encoder "
                                       r"settings: missing \['params_sha256'\]"):
    coughjax.load_encoder(name)
  settings.write_text('{"format": 1, "encoder": ')
  with pytest.raises(ValueError, match=f"^{re.escape(str(settings))}: shipped encoder "
                                       "settings: not valid JSON"):
    coughjax.load_encoder(name)


def test_unreadable_workdir_settings_name_the_file(tmp_path):
  (tmp_path / "config.json").write_text("{")
  (tmp_path / predict.ENCODERS_FILE).write_text("{}")
  with pytest.raises(ValueError, match=r"config\.json: the run's config: not valid JSON"):
    coughjax.load_classifier(tmp_path)
  with pytest.raises(ValueError, match=r"config\.json: the run's config: not valid JSON"):
    coughjax.load_encoder(tmp_path)
  (tmp_path / "config.json").write_text('{"features": {}, "model": {}}')
  with pytest.raises(ValueError, match=r"encoders\.json: encoder settings: missing "
                                       r"\['encoders', 'frozen'\]"):
    coughjax.load_classifier(tmp_path)


def test_embed_cli_checks_its_output_first_and_leaves_no_stale_file(runs, tmp_path):
  f = _flac(tmp_path / "a.flac", "synthetic://1/0/cough-heavy")
  # Checked before anything is loaded: the workdir does not even exist.
  proc = _cli("coughjax.embed", "--workdir=nowhere", f"--output={tmp_path}/no/dir/x.npz", f,
              check=False)
  assert proc.returncode != 0
  assert f"--output={tmp_path}/no/dir/x.npz: folder {tmp_path}/no/dir does not exist" in (
      proc.stderr)
  proc = _cli("coughjax.embed", "--workdir=nowhere", f"--output={tmp_path}", f, check=False)
  assert proc.returncode != 0 and "a folder; give a file name" in proc.stderr
  # --output=x writes x.npz and says so.
  proc = _cli("coughjax.embed", f"--workdir={runs['pretrain']}", f"--output={tmp_path}/x", f)
  assert proc.stdout.startswith(f"{tmp_path}/x.npz: 1 recordings")
  assert list(np.load(tmp_path / "x.npz")["paths"]) == [f]
  # A run that embeds nothing leaves no earlier result behind.
  proc = _cli("coughjax.embed", f"--workdir={runs['pretrain']}", f"--output={tmp_path}/x",
              str(tmp_path / "missing.wav"), check=False)
  assert proc.returncode != 0 and not (tmp_path / "x.npz").exists()
  assert "not written (the earlier file there was removed)" in proc.stderr


def test_export_checks_its_folder_first_and_leaves_no_stale_file(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(ValueError, match=r"path=.*file/sub: .*file is not a folder"):
    export.export_encoder("nowhere", tmp_path / "file" / "sub")
  out = tmp_path / "exp"
  out.mkdir()
  for name in (export.PROGRAM, export.SIDECAR):
    (out / name).write_text("an earlier export")
  with pytest.raises(FileNotFoundError, match="not a shipped encoder"):
    export.export_encoder(tmp_path / "nowhere", out)
  assert list(out.iterdir()) == []


def test_logmel_stats_matches_a_loop():
  f = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
  want = []
  for stat in (lambda c: c.mean(), lambda c: c.std(),
               lambda c: np.mean([abs(c[t + 1] - c[t]) for t in range(len(c) - 1)])):
    want += [stat(f[:, b].astype(np.float64)) for b in range(4)]
  np.testing.assert_allclose(baselines.logmel_statistics(f), want, rtol=1e-5)


def test_probe_command_prints_encoder_and_baseline(runs):
  proc = _cli("coughjax.probe", f"--encoder={runs['pretrain']}",
              "--config=configs/probe.py:runlocal")
  rows = [l for l in proc.stdout.splitlines() if l.startswith("| ") and "---" not in l][1:]
  assert [r.split(" | ")[0][2:] for r in rows] == [str(runs["pretrain"]), "logmel_stats"]
  assert [int(r.split(" | ")[1]) for r in rows] == [64, 192]
  for r in rows:
    auc = float(r.split(" | ")[2].split()[0])
    assert 0 <= auc <= 100
  assert not INFO_LINE.search(proc.stderr)


def test_probe_on_real_coswara_sex(runs, coswara_ci):
  sys.path.insert(0, str(REPO))
  from configs import probe as probe_configs  # pylint: disable=g-import-not-at-top
  config = probe_configs.get_config()
  config.data.name, config.data.root, config.data.label = "coswara", str(coswara_ci), "sex"
  config.num_runs = 2
  results = dict((name, runs_) for name, _, runs_ in probe.run([str(runs["pretrain"])], config))
  assert set(results) == {str(runs["pretrain"]), "logmel_stats"}
  # The same participants are tested for both, and every split has both classes.
  for name, per_split in results.items():
    assert all(np.isfinite(r["auc"]) for r in per_split), name
  assert [r["test"] for r in results["logmel_stats"]] == [
      r["test"] for r in results[str(runs["pretrain"])]]


def test_embed_records_streams_from_one_pack(monkeypatch, tmp_path):
  """A corpus is embedded from its pack a batch of clips at a time, giving what
  embedding its features in memory gives (masked: keys from the pack's digests)."""
  monkeypatch.setenv("COUGHJAX_CACHE", str(tmp_path))  # counts the packs it writes
  from coughjax.data import features as features_lib  # pylint: disable=g-import-not-at-top
  from coughjax.data import packed  # pylint: disable=g-import-not-at-top
  from coughjax.data import pipeline  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(inputs, "MAX_BATCH", 4)  # several batches of a small corpus
  records = synthetic.manifest(5, sounds=("cough-heavy", "cough-shallow"))
  gathered = []
  real_gather = pipeline.ClipStore.gather
  monkeypatch.setattr(pipeline.ClipStore, "gather",
                      lambda self, s: gathered.append(len(s)) or real_gather(self, s))
  for mask in (True, False):
    gathered.clear()
    encoder = coughjax.load_encoder("transformer_m50_real", mask=mask)
    kept, out = embed.embed_records(encoder, records, progress=False)
    assert len(gathered) >= 3 and max(gathered) <= 4
    cached, feats, _ = features_lib.FeatureCache(encoder.spec.features).load(
        records, progress=False)
    ref = encoder.embed_features(feats, [r.path for r in cached])
    assert kept == cached and out.names == ref.names and not out.errors
    for field in ("recordings", "clips", "clip_recording", "clip_index"):
      np.testing.assert_array_equal(getattr(out, field), getattr(ref, field), field)
  assert len(list(packed.directory().glob("*.f32"))) == 1


def test_embed_cli_embeds_a_data_source_with_labels(runs, tmp_path):
  out = tmp_path / "src.npz"
  _cli("coughjax.embed", f"--encoder={runs['pretrain']}", f"--output={out}",
       "--config=configs/probe.py:runlocal", "--config.data.name=synthetic")
  saved = np.load(out)
  n = len(saved["paths"])
  assert n > 10 and saved["embeddings"].shape == (n, 64)
  assert set(saved["labels"].tolist()) == {0, 1}  # the downstream synthetic set is labelled
  assert all(p.startswith("synthetic://") for p in saved["paths"])
  encoder = coughjax.load_encoder(runs["pretrain"])
  wave = synthetic.render(str(saved["paths"][0]), 16000)
  np.testing.assert_allclose(encoder.embed(wave, 16000), saved["embeddings"][0], atol=1e-6)
  proc = _cli("coughjax.embed", f"--encoder={runs['pretrain']}", f"--output={out}", check=False)
  assert proc.returncode != 0 and "give audio files, or a data source" in proc.stderr


def test_export_resolves_auto_settings_for_its_target_platforms(runs, tmp_path, monkeypatch):
  """An "auto" attention kernel is picked for each platform exported for, not for
  the exporting machine (a CPU here)."""
  picked = []
  resolve, for_platforms = transformer.resolve_attention_impl, export.for_platforms
  monkeypatch.setattr(transformer, "resolve_attention_impl",
                      lambda value, platform=None: picked.append(resolve(value, platform))
                      or picked[-1])
  # Count the kernels of the exported trace only (loading the encoder traces it too).
  monkeypatch.setattr(export, "for_platforms",
                      lambda fn, platforms: picked.clear() or for_platforms(fn, platforms))
  expected = np.asarray(infer.embeddings(*_live_encoder(runs["pretrain"]), _clips(4)))
  for platforms, kernels in ((["cuda"], ["dot_product"] * 2), (["cpu"], ["einsum"] * 2),
                             (["cpu", "cuda"], ["einsum", "einsum", "dot_product",
                                                "dot_product"])):
    folder = export.export_encoder(runs["pretrain"], tmp_path / "-".join(platforms),
                                   platforms=platforms)
    assert sorted(picked) == sorted(kernels), (platforms, picked)  # 2 layers per trace
    exported, meta = export.load(folder)
    assert meta["platforms"] == platforms
    if "cpu" in platforms:
      np.testing.assert_allclose(exported.call(_clips(4)), expected, atol=1e-5)
  assert jax.default_backend() == "cpu"


def _live_encoder(source):
  encoder = coughjax.load_encoder(source)
  return encoder.module, encoder.params


def _clips(n):
  return np.random.default_rng(n).normal(-8.0, 4.0, (n, 96, 64)).astype(np.float32)


def _onnx_session(folder):
  import onnxruntime  # pylint: disable=g-import-not-at-top
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3
  return onnxruntime.InferenceSession(str(folder / export.ONNX_FILE), options)


@pytest.fixture(scope="module")
def real_files(coswara_ci):
  """Real cough recordings (CC BY 4.0) that the runlocal models never saw (the
  shipped encoder saw their audio, not their labels, in pre-training)."""
  return [str(p) for p in sorted(coswara_ci.glob("audio/*/cough-heavy.flac"))[:3]]


@pytest.fixture(scope="module")
def onnx_encoders(runs, tmp_path_factory):
  """{source: folder}: the runlocal Transformer exported by the command, the shipped
  encoder by the API."""
  pytest.importorskip("jax2onnx")
  root = tmp_path_factory.mktemp("onnx")
  proc = _cli("coughjax.export", f"--workdir={runs['pretrain']}", f"--output={root / 'pre'}",
              "--format=onnx")
  assert "onnxruntime" in proc.stdout and not INFO_LINE.search(proc.stderr), proc.stderr
  shipped = export.export_encoder("transformer_m50_real", root / "shipped", format="onnx")
  return {str(runs["pretrain"]): root / "pre", "transformer_m50_real": shipped}


def test_onnx_encoders_reproduce_the_live_ones_on_real_clips(onnx_encoders, real_files):
  for source, folder in onnx_encoders.items():
    session = _onnx_session(folder)
    encoder = coughjax.load_encoder(source)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["kind"] == "encoder" and meta["coughjax_version"] == coughjax.__version__
    features = json.loads(meta["features"])
    assert features == export.features_meta(encoder.spec) and features["nfft"] == 512
    assert [i["shape"] for i in json.loads(meta["inputs"])] == [["b", 96, 64]]
    live = encoder.embed_files(real_files)
    assert not live.errors and len(live.clips) > 8
    x = inputs.cut([inputs.file_features(f, encoder.spec.features) for f in real_files],
                   encoder.spec).x
    for rows in (slice(0, 1), slice(None)):  # batch 1 and every clip, one file
      got = session.run(None, {"x": x[rows]})[0]
      assert got.shape == live.clips[rows].shape
      np.testing.assert_allclose(got, live.clips[rows], atol=1e-5, rtol=0)


DOCS_MODELS = REPO / "docs" / "models.md"


def _documented_front_end():
  """The ONNX front-end lines of docs/models.md: (the block, {"h": encoder line, "p":
  classifier line})."""
  text = DOCS_MODELS.read_text()
  blocks = re.findall(r"```python\n(.*?)```", text.split("<!-- onnx-front-end -->", 1)[1],
                      re.S)
  runs_ = {line.split(" =")[0]: line for line in blocks[1].splitlines() if line.strip()}
  return blocks[0], runs_


_DOCUMENTED_RUN = r"""
import json, sys
import numpy as np
wave = np.load("wave.npy")
exec(open("front_end.py").read())
exec(sys.argv[1])
out = {"x": x, "feats": feats, "rec_keys": rec_keys, "clip_index": clip_index}
out.update({k: np.asarray(v) for k, v in (("h", globals().get("h")), ("p", globals().get("p")))
            if v is not None})
np.savez("documented_out.npz", **out)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("coughjax", "jax", "flax"))))
"""


def run_documented_front_end(folder, wave, line, tmp_path):
  """Runs the documented lines on `wave` with `folder`'s model.onnx at the documented
  path, in a Python without coughjax; returns their arrays."""
  block, _ = _documented_front_end()
  work = tmp_path / "documented"
  (work / "export" / "enc").mkdir(parents=True, exist_ok=True)
  (work / "export" / "enc" / export.ONNX_FILE).write_bytes((folder / export.ONNX_FILE).read_bytes())
  (work / "front_end.py").write_text(block)
  np.save(work / "wave.npy", wave)
  proc = subprocess.run([sys.executable, "-c", _DOCUMENTED_RUN, line], cwd=work,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": ""}, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == []  # no coughjax, JAX or Flax
  return dict(np.load(work / "documented_out.npz"))


def test_documented_onnx_front_end_makes_the_model_input(onnx_encoders, real_files, tmp_path):
  folder = onnx_encoders["transformer_m50_real"]
  encoder = coughjax.load_encoder("transformer_m50_real")
  _, lines = _documented_front_end()
  for path in real_files:
    wave = audio.load(path, 16000)
    out = run_documented_front_end(folder, wave, lines["h"], tmp_path)
    feats = inputs.file_features(path, encoder.spec.features)
    x = inputs.cut([feats], encoder.spec).x
    assert out["x"].shape == x.shape and out["h"].shape == (len(x), encoder.dim)
    # python_speech_features' features are coughjax's, up to FFT round-off, which
    # matters only in bands whose energy is round-off (docs/models.md says so).
    powered = x > -20
    np.testing.assert_allclose(out["x"][powered], x[powered], atol=1e-3, rtol=0)
    np.testing.assert_array_equal(out["rec_keys"],
                                  np.tile(mask_key.recording_key(out["feats"], 96), (len(x), 1)))
    np.testing.assert_array_equal(out["clip_index"], np.arange(len(x)))
    live = np.asarray(infer.embeddings(encoder.module, encoder.params, out["x"]))
    np.testing.assert_allclose(out["h"], live, atol=1e-5, rtol=0)


def test_onnx_ds_ensemble_reproduces_the_live_one_on_real_clips(runs, real_files, tmp_path):
  pytest.importorskip("jax2onnx")
  clf = coughjax.load_classifier(runs["ensemble"])
  assert [infer.inference_mask_rate(e) for e in clf.model.encoders] == [0.5, 0.5]
  # The masks come from the recording digest by the counter hash, which ONNX holds.
  folder = export.export_classifier(runs["ensemble"], tmp_path / "clf", format="onnx")
  feats = [inputs.file_features(f, clf.spec.features) for f in real_files]
  clips = inputs.cut(feats, clf.spec, real_files)
  live = clf.clip_probabilities(clips)
  session = _onnx_session(folder)
  meta = session.get_modelmeta().custom_metadata_map
  assert json.loads(meta["masks_at_inference"]) == [0.5, 0.5]
  assert [i["name"] for i in json.loads(meta["inputs"])] == ["x", "rec_keys", "clip_index"]
  feeds = {"x": clips.x, "rec_keys": clips.rec_keys, "clip_index": clips.clip.astype(np.int32)}
  for rows in (slice(0, 1), slice(None)):  # batch 1 and every clip, one file
    got = session.run(None, {k: v[rows] for k, v in feeds.items()})[0]
    np.testing.assert_allclose(got, live[rows], atol=1e-5, rtol=0)
  # The masks are in the graph: other keys give other outputs.
  other = session.run(None, dict(feeds, rec_keys=clips.rec_keys + 1))[0]
  assert np.max(np.abs(other - live)) > 1e-4
  # The documented lines, keys included, give the live model's outputs on their input.
  out = run_documented_front_end(folder, audio.load(real_files[0], 16000),
                                 _documented_front_end()[1]["p"], tmp_path)
  want = infer.probabilities(clf.model, clf.params, out["x"], out["rec_keys"], out["clip_index"])
  assert out["p"] == pytest.approx(float(np.mean(want)), abs=1e-5)


@pytest.fixture(scope="module")
def gain_encoder(tmp_path_factory):
  """(workdir, ONNX folder) of a runlocal Transformer pre-trained on gain-normalised
  features (`features.normalise=gain`)."""
  pytest.importorskip("jax2onnx")
  root = tmp_path_factory.mktemp("gain")
  config = pretrain_configs.get_config("transformer_m50,runlocal")
  config.num_epochs = 1
  config.features.normalise = "gain"
  config.lock()
  run.run(config, str(root / "pre"))
  return root / "pre", export.export_encoder(root / "pre", root / "onnx", format="onnx")


def test_documented_onnx_lines_reproduce_a_gain_normalised_encoder(gain_encoder, tmp_path):
  workdir, folder = gain_encoder
  encoder = coughjax.load_encoder(workdir)
  features = json.loads(_onnx_session(folder).get_modelmeta().custom_metadata_map["features"])
  assert encoder.spec.features.normalise == features["normalise"] == "gain"
  _, lines = _documented_front_end()
  # A synthetic cough (no digital silence, where python_speech_features' FFT round-off
  # would move the recording's mean: docs/models.md says so), as float and int16 PCM.
  # And one shorter than a clip (0.7 s: padded to one clip, as coughjax pads it).
  wave = synthetic.render("synthetic://1/3/cough-heavy", 16000)
  pcm = np.clip(np.round(wave * 2**15), -2**15, 2**15 - 1).astype(np.int16)
  short = wave[:int(0.7 * 16000)]
  for given, clips in ((wave, "several"), (pcm, "several"), (short, "one")):
    out = run_documented_front_end(folder, given, lines["h"], tmp_path)
    live = encoder.embed_clips(given, 16000)
    assert out["h"].shape == live.shape and (len(live) > 1) == (clips == "several")
    np.testing.assert_allclose(out["h"], live, atol=1e-3, rtol=0)
    if clips == "several":  # the features are gain-normalised (mean level removed) ...
      assert abs(float(np.mean(out["feats"], dtype=np.float64))) < 1e-3
  # ... and without normalisation they would not match: the recipe's step matters.
  raw = np.asarray(infer.embeddings(encoder.module, encoder.params, inputs.cut(
      [audio.logfbank(wave, 16000)], encoder.spec).x))
  assert np.max(np.abs(raw - live)) > 0.1


def test_run_onnx_refuses_an_empty_batch(gain_encoder):
  session = _onnx_session(gain_encoder[1])
  with pytest.raises(ValueError, match=r"empty batch \(x \(0, 96, 64\)\): ONNX Runtime would "
                     "kill the process"):
    export.run_onnx(session, {"x": np.zeros((0, 96, 64), np.float32)})
  assert export.run_onnx(session, {"x": _clips(1)}).shape == (1, 64)


def test_onnx_export_refuses_random_bits(runs, tmp_path):
  pytest.importorskip("jax2onnx")
  x = {"name": "x", "shape": ["b", 96, 64], "dtype": "float32", "doc": ""}
  noisy = export._Program(  # pylint: disable=protected-access
      lambda x: x.mean((1, 2)) + jax.random.uniform(jax.random.key(0), x.shape[:1]),
      [x], {"kind": "encoder", "source": "noisy", "output": {"name": "h", "shape": ["b"]}})
  with pytest.raises(export.ExportError, match=r"noisy: cannot export .*random_bits.*RandomUniform"):
    export._export(lambda: noisy, tmp_path / "a", None, None, "onnx")  # pylint: disable=protected-access
  assert not (tmp_path / "a" / export.ONNX_FILE).exists()  # nothing written
  with pytest.raises(ValueError, match="apply to --format=jax only"):
    export.export_encoder(runs["pretrain"], tmp_path / "b", platforms=["cpu"], format="onnx")
  with pytest.raises(ValueError, match="unknown export format 'tflite'"):
    export.export_encoder(runs["pretrain"], tmp_path / "b", format="tflite")


def test_onnx_converts_the_gru(tmp_path):
  """The GRU's scan (and its custom VJP, unused at inference) converts; with a fixed
  even batch its CPU setting advances two streams per step, which converts too."""
  pytest.importorskip("jax2onnx")
  gru = models.build_encoder({"name": "gru", "d_model": 16, "num_layers": 2})
  params = gru.init(jax.random.key(0), _clips(1), train=False)["params"]
  x = {"name": "x", "shape": ["b", 96, 64], "dtype": "float32", "doc": ""}
  program = export._Program(  # pylint: disable=protected-access
      functools.partial(infer.embeddings, gru, params), [x],
      {"kind": "encoder", "source": "tiny gru", "output": {"name": "h", "shape": ["b", 16]}})
  live = np.asarray(infer.embeddings(gru, params, _clips(4)))
  for batch in (None, 4):
    folder = export._export(lambda: program, tmp_path / str(batch), batch, None, "onnx")  # pylint: disable=protected-access
    session = _onnx_session(folder)
    for rows in ((slice(0, 1), slice(None)) if batch is None else (slice(None),)):
      got = session.run(None, {"x": _clips(4)[rows]})[0]
      np.testing.assert_allclose(got, live[rows], atol=1e-5, rtol=0)
