"""Several data sources at once: the manifest, the `real` pre-training option, one step."""

import collections
import csv
import json
import pathlib
import shutil

import numpy as np
import pytest

import conftest
from configs import common
from configs import pretrain as pretrain_configs
from coughjax import checkpoints
from coughjax import data
from coughjax.data import features
from coughjax.data import pipeline
from coughjax.train import run

COSWARA_PARTICIPANTS = 5
# (source, covid19) -> files of the covid19_cough slice: 10 recordings.
COUGH_SLICE = {("call-center", True): 3, ("call-center", False): 2,
               ("telegram", True): 2, ("telegram", False): 3}


@pytest.fixture(scope="module")
def slices(coswara_ci, covid19_cough, tmp_path_factory):
  """Small copies of both real folders in their own layouts: (coswara, covid19_cough)."""
  out = tmp_path_factory.mktemp("sources")
  with open(coswara_ci / "labels.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  people = sorted({r["participant_id"] for r in rows})[:COSWARA_PARTICIPANTS]
  rows = [r for r in rows if r["participant_id"] in people]
  cw = out / "coswara"
  for r in rows:
    (cw / r["path"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(coswara_ci / r["path"], cw / r["path"])
  with open(cw / "labels.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)

  cc = out / "covid19_cough"
  # Distinct contents, and long enough for the 0.5 s minimum (> 4 kB of MP3).
  kept = conftest.copy_covid19_cough_slice(
      covid19_cough, cc, COUGH_SLICE, lambda r: (r["source"], r["covid19"]), min_bytes=4000)
  (cc / "metadata.json").write_text(json.dumps(kept))
  return cw, cc, len(rows)


def _data_cfg(cw, cc, **kw):
  cfg = common.get_base_config().data
  cfg.update(dict(name="coswara+covid19_cough", roots=f"coswara={cw},covid19_cough={cc}"),
             **kw)
  return cfg


def test_multisource_manifest_ids_and_counts(slices):
  cw, cc, coswara_files = slices
  recs = data.get_manifest(_data_cfg(cw, cc))
  per_source = collections.Counter(r.participant_id.split(":", 1)[0] for r in recs)
  assert per_source == {"coswara": coswara_files, "covid19_cough": 10}
  people = collections.defaultdict(set)
  for r in recs:
    people[r.participant_id.split(":", 1)[0]].add(r.participant_id)
  assert {k: len(v) for k, v in people.items()} == {"coswara": COSWARA_PARTICIPANTS,
                                                    "covid19_cough": 10}
  assert len({r.participant_id for r in recs}) == COSWARA_PARTICIPANTS + 10
  assert collections.Counter(r.stratum for r in recs) == {
      "coswara": coswara_files, "covid19_cough/call-center": 5,
      "covid19_cough/telegram": 5}
  # The single-source manifests, unprefixed, are the same recordings.
  alone = data.get_manifest(_single(cc))
  assert sorted(r.path for r in alone) == sorted(
      r.path for r in recs if r.participant_id.startswith("covid19_cough:"))


def _single(root):
  cfg = common.get_base_config().data
  cfg.update(dict(name="covid19_cough", root=str(root)))
  return cfg


def test_colliding_ids_get_source_prefixes(slices, tmp_path):
  """A Coswara participant named like a covid19_cough recording stays distinct."""
  cw, cc, _ = slices
  clash = json.loads((cc / "metadata.json").read_text())[0]["filename"][:-4]
  shutil.copytree(cw, tmp_path / "cw")
  rows = list(csv.DictReader(open(tmp_path / "cw" / "labels.csv", newline="")))
  first = rows[0]["participant_id"]
  for r in rows:
    if r["participant_id"] == first:
      r["participant_id"] = clash
  with open(tmp_path / "cw" / "labels.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  recs = data.get_manifest(_data_cfg(tmp_path / "cw", cc))
  owners = {r.participant_id: r.stratum.split("/")[0] for r in recs}
  assert owners[f"coswara:{clash}"] == "coswara"
  assert owners[f"covid19_cough:{clash}"] == "covid19_cough"


def test_roots_errors(slices):
  cw, cc, _ = slices
  with pytest.raises(ValueError, match=r"needs a folder for 'covid19_cough'"):
    data.get_manifest(_data_cfg(cw, cc, roots=f"coswara={cw}"))
  with pytest.raises(ValueError, match=r"entry 'coswara' is not name=path"):
    data.get_manifest(_data_cfg(cw, cc, roots="coswara"))
  with pytest.raises(ValueError, match=r"names \['covid19_sounds'\], which data.name"):
    data.get_manifest(_data_cfg(cw, cc, roots=f"coswara={cw},covid19_cough={cc},"
                                              f"covid19_sounds={cc}"))
  with pytest.raises(ValueError, match=r"unknown: \['coswera'\]"):
    data.get_manifest(_data_cfg(cw, cc, name="coswera+covid19_cough"))
  with pytest.raises(ValueError, match="must be distinct"):
    data.get_manifest(_data_cfg(cw, cc, name="coswara+coswara"))


def test_one_recording_participants_pair_two_crops_of_it(slices):
  _, cc, _ = slices
  recs = data.get_manifest(_single(cc))
  kept, feats, _ = features.FeatureCache().load(recs, workers=1, progress=False)
  store = pipeline.ClipStore(kept, feats)
  batches = pipeline.ContrastiveBatches(store, 8)
  x = batches.batch(0, 0).swapaxes(0, 1)  # [8, 2, T, M] -> [2, 8, T, M]
  rec_of = np.repeat(np.arange(len(store)), store.lengths)
  moved = 0
  for i in range(8):
    where = [np.flatnonzero((store.frames[:-95] == x[v, i, 0]).all(1)) for v in (0, 1)]
    # The first frame of each view identifies its recording.
    assert {int(rec_of[w[0]]) for w in where} == {int(rec_of[where[0][0]])}
    moved += not np.array_equal(x[0, i], x[1, i])
  assert moved >= 6  # two crops, not one clip twice (recordings of > 1 clip)


def test_real_option_config(monkeypatch, tmp_path):
  config = pretrain_configs.get_config("transformer_m50,real")
  assert config.variant == "transformer_m50_real"
  assert config.data.name == "coswara+covid19_cough"
  roots = data.parse_roots(config.data.roots)
  shared = pathlib.Path(pretrain_configs.__file__).resolve().parents[1].parent / "shared"
  assert roots == {"coswara": str(shared / "data" / "coswara_ci"),
                   "covid19_cough": str(shared / "data" / "covid19_cough")}
  monkeypatch.setenv("COUGHJAX_COVID19_COUGH", str(tmp_path))
  assert data.parse_roots(pretrain_configs.get_config("gru,real").data.roots)[
      "covid19_cough"] == str(tmp_path)
  with pytest.raises(ValueError, match=r"unknown config option\(s\) \['rael'\]; known: "
                                       "runlocal, real"):
    pretrain_configs.get_config("gru,rael")


def test_real_runlocal_pretraining_one_step(slices, tmp_path):
  cw, cc, _ = slices
  config = pretrain_configs.get_config("transformer_m50,real,runlocal")
  config.data.roots = f"coswara={cw},covid19_cough={cc}"
  config.batch_size = 8  # 12 training participants (4 Coswara, 8 covid19_cough)
  config.eval_batch_size = 8
  config.num_epochs = 1
  config.lock()
  state = run.run(config, str(tmp_path))
  lines = checkpoints.read_metrics(tmp_path)
  train = [l for l in lines if l["split"] == "train"]
  assert int(state.step) == 1 and len(train) == 1
  assert all(np.isfinite(l["loss"]) for l in lines)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["data"]["name"] == "coswara+covid19_cough"
