"""The PyTorch twins of benchmarks/ match coughjax, and the benchmark scripts run."""

import functools
import json
import os
import pathlib
import random
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import torch_twins  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import downstream as downstream_configs  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import pretrain as pretrain_configs  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax import losses  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax import paper  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.models import masking  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.models import vggish  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.models import vggish_convert  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import downstream  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import pretrain  # pylint: disable=g-import-not-at-top,wrong-import-position

TOL = 1e-4
RATES = (0.0, 0.25, 0.5, 0.75, 1.0)


def _encoder_cfg(name: str) -> dict:
  """The encoder of the downstream config of `name` (its real defaults)."""
  config = downstream_configs.get_config(name)
  return downstream.encoder_config(config, "encoder_a")


def _clips(batch: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((batch, 96, 64), np.float32)


@functools.lru_cache(maxsize=None)
def _built(name: str):
  """(jitted apply, params, twin with those weights in eval mode) of an encoder."""
  cfg = _encoder_cfg(name)
  model = models.build_encoder(cfg)
  params = jax.device_get(jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x,
                                                       train=False))(_clips(2))["params"])
  apply = jax.jit(lambda x, mask=None: model.apply({"params": params}, x, train=False,
                                                   mask=mask))
  twin = torch_twins.encoder_twin(cfg)
  assert torch_twins.num_params(twin) == torch_twins.num_params(params)
  return apply, params, torch_twins.load_flax_params(twin, params).eval()


@pytest.mark.parametrize("name", ["transformer", "gru"])
def test_encoder_parameter_counts_match(name):
  _, params, twin = _built(name)
  assert torch_twins.num_params(twin) == torch_twins.num_params(params) > 40_000


def test_vggish_and_ensembles_parameter_counts_match():
  assert (torch_twins.num_params(torch_twins.VGGishTwin())
          == torch_twins.num_params(vggish.abstract_params()))
  for variant in ("ens_gru_transformer", "ens_transformer_cp_ds50"):
    config = downstream_configs.get_config(variant)
    for key in downstream_configs.BRANCHES:
      config[key].init = "scratch"
    model = downstream.build_classifier(config)
    shapes = jax.eval_shape(lambda: model.init(
        {"params": jax.random.PRNGKey(0), "mask": jax.random.PRNGKey(1)},
        jnp.zeros((2, 96, 64)), train=False))["params"]
    twin = torch_twins.ClassifierTwin(
        [torch_twins.encoder_twin(downstream.encoder_config(config, k))
         for k in downstream_configs.BRANCHES])
    assert torch_twins.num_params(twin) == torch_twins.num_params(shapes), variant


@pytest.mark.parametrize("name", ["transformer", "gru"])
def test_twin_matches_coughjax_without_mask(name):
  apply, _, twin = _built(name)
  x = _clips(6, seed=1)
  expected = np.asarray(apply(x))
  with torch.inference_mode():
    got = twin(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
  assert np.abs(expected).max() > 0.1  # not a trivially small output


@pytest.mark.parametrize("num_layers", [1, 3])
def test_gru_gradients_match_the_twin(num_layers):
  """The GRU's hand-written backward pass (`gru.stacked_recurrence`) gives torch
  autograd's gradients through nn.GRU, for every parameter in the shared layout."""
  cfg = {"name": "gru", "d_model": 16, "num_layers": num_layers, "dropout": 0.0}
  model = models.build_encoder(cfg)
  x = _clips(5, seed=3)[:, :24]
  params = model.init(jax.random.PRNGKey(0), x, train=False)["params"]
  params = jax.tree.map(lambda p: p + 0.2 * np.random.default_rng(1).standard_normal(
      p.shape, np.float32), params)  # biases too
  target = np.random.default_rng(2).standard_normal((5, 16), np.float32)

  def loss(p):
    return jnp.sum(model.apply({"params": p}, x, train=True) * target)

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  twin = torch_twins.encoder_twin(cfg)
  twin.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                        for k, v in twin.flax_to_torch(params).items()})
  theirs = (twin(torch.from_numpy(x)) * torch.from_numpy(target)).sum()
  theirs.backward()
  np.testing.assert_allclose(float(theirs), float(value), rtol=1e-5)
  expected = twin.flax_to_torch(jax.tree.map(np.zeros_like, params))
  for name, param in twin.named_parameters():
    expected[name] = param.grad.numpy()
  got = twin.flax_to_torch(grads)
  assert got.keys() == expected.keys() and len(got) == 4 * num_layers
  for name in got:
    np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-4, err_msg=name)
    assert np.abs(got[name]).max() > 1e-2, name  # every gradient is exercised


@pytest.mark.parametrize("rate", [0.5, 1.0])
def test_transformer_twin_matches_with_a_given_mask(rate):
  apply, _, twin = _built("transformer")
  x = _clips(6, seed=2)
  mask = masking.random_key_mask(jax.random.PRNGKey(3), 6, 96, rate)
  expected = np.asarray(apply(x, mask))
  assert np.abs(expected - np.asarray(apply(x))).max() > 10 * TOL  # the mask matters
  mask_t = torch.from_numpy(np.array(mask))
  with torch.inference_mode():  # PyTorch's fused inference kernel
    fused = twin(torch.from_numpy(x), mask_t).numpy()
  slow = twin(torch.from_numpy(x), mask_t).detach().numpy()  # the autograd path
  np.testing.assert_allclose(fused, expected, atol=TOL, rtol=0)
  np.testing.assert_allclose(slow, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("rate", RATES)
def test_both_mask_generators_mask_exactly_round_rate_t(rate):
  count = masking.num_masked(96, rate)
  assert torch_twins.num_masked(96, rate) == count
  loop = torch_twins.loop_mask(64, 96, rate, random.Random(0))
  vec = torch_twins.vectorised_mask(64, 96, rate, torch.Generator().manual_seed(0))
  assert loop.dtype == torch.bool and loop.shape == (64, 96)
  assert (loop.sum(dim=1) == count).all()
  if count == 0:
    assert vec is None  # nothing to mask, nothing to apply
  else:
    assert (vec.sum(dim=1) == count).all()
  # The blocked-key mask keeps every query's own position.
  blocked = torch_twins.blocked_keys(loop, num_heads=4)
  assert blocked.shape == (64 * 4, 96, 96)
  assert not blocked.diagonal(dim1=1, dim2=2).any()


def test_masks_differ_between_clips():
  vec = torch_twins.vectorised_mask(8, 96, 0.5, torch.Generator().manual_seed(0))
  loop = torch_twins.loop_mask(8, 96, 0.5, random.Random(0))
  for m in (vec, loop):
    assert len({tuple(row.tolist()) for row in m}) == 8


def test_contrastive_twin_matches_loss_and_projections():
  config = pretrain_configs.get_config("transformer_m0")
  model = pretrain.build_model(config.model)
  params = jax.device_get(pretrain.init_state(model, config, jax.random.PRNGKey(0)).params)
  cfg = pretrain.encoder_config(config.model)
  twin = torch_twins.ContrastiveTwin(torch_twins.encoder_twin(cfg), config.model.proj_dim,
                                     config.model.temperature)
  torch_twins.load_flax_params(twin, params).eval()
  x = _clips(8, seed=4)  # 4 pairs: [a_0..a_3, b_0..b_3]

  @jax.jit
  def forward(x):
    z = model.apply({"params": params}, x, train=False)
    logits = model.apply({"params": params}, z, z, method=type(model).logits)
    return z, losses.contrastive_loss(logits, *losses.pair_indices(4))[0]

  z, expected = forward(x)
  with torch.no_grad():
    zt = twin(torch.from_numpy(x))
    got = torch_twins.contrastive_loss(twin.logits(zt, zt))
  np.testing.assert_allclose(zt.numpy(), z, atol=TOL, rtol=0)
  np.testing.assert_allclose(float(got), float(expected), atol=TOL, rtol=0)


def test_mask_rate_override_draws_an_all_false_mask_at_zero():
  # The like-for-like DS flatness table runs the masked program at 0 % too.
  from coughjax import infer  # pylint: disable=g-import-not-at-top
  model = models.build_encoder(dict(_encoder_cfg("transformer"), mask_rate=0.0,
                                    mask_at_eval=True))
  seeds = infer.clip_seeds(jnp.zeros((3, 2), jnp.uint32), jnp.arange(3))
  assert infer.branch_masks([model], seeds, 96) == (None,)  # as configured: no mask
  (zero,) = infer.branch_masks([model], seeds, 96, mask_rates=[0.0])
  (half,) = infer.branch_masks([model], seeds, 96, mask_rates=[0.5])
  assert zero.shape == (3, 96) and not zero.any()
  np.testing.assert_array_equal(half.sum(axis=1), 48)


def test_vggish_twin_inverts_the_converter():
  twin = torch_twins.VGGishTwin()
  state = {k: v.numpy() for k, v in twin.state_dict().items()}
  flax_params = vggish_convert.convert_state_dict(state)
  back = twin.flax_to_torch(flax_params)
  assert set(back) == set(state)
  for k, v in state.items():
    np.testing.assert_array_equal(back[k], v)


def test_load_rejects_a_tree_that_does_not_fit():
  _, params, twin = _built("transformer")
  bad = {"kernel": np.zeros((3, 64), np.float32), "bias": np.zeros(64, np.float32)}
  params = dict(params, layer_0=dict(params["layer_0"], extra=bad))
  with pytest.raises(ValueError):
    torch_twins.load_flax_params(twin, params)


def _run(script: str, *args: str) -> str:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, f"{script}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
  return proc.stdout


def _table_rows(text: str) -> list[list[str]]:
  return [[c.strip() for c in line.strip("|").split("|")]
          for line in text.splitlines()
          if line.startswith("| ") and not re.match(r"\|\s*(model|implementation|batch)\s*\|", line)]


def test_latency_quick_has_every_table6_row(tmp_path):
  out = _run("latency.py", "--quick", "--compilation_cache", f"--json={tmp_path}/l.json")
  rows = _table_rows(out)
  # A row whose program is identical to an earlier row's is timed once, and says so.
  labels = [re.sub(r" \(timed as .*\)$", "", r[0]) for r in rows if not r[0].isdigit()]
  assert labels == list(paper.TABLE6_US)  # 14 rows, in the paper's order
  assert sum("(timed as" in r[0] for r in rows) == 4  # the -CP and pre-trained twins
  # The five DS-masked ensembles like for like: batch, 5 rates, max/min, the control's
  # max/min (the 0 % program compiled twice), other processes' cores.
  (flat,) = [r for r in rows if r[0].isdigit()]
  assert flat[0] == "1" and len(flat) == 9 and min(map(float, flat[-3:-1])) >= 1.0
  report = json.loads((tmp_path / "l.json").read_text())
  assert [r["label"] for r in report["results"]] == list(paper.TABLE6_US)
  for r in report["results"]:
    assert r["batch"] == 1 and r["ratio_best"] > 0 and r["coughjax_gpu"] is None
    assert r["ratio_best"] == pytest.approx(
        r["coughjax"]["median_us"] / r["torch_best"]["median_us"])
  flatness = report["ds_flatness"]["1"]
  assert set(flatness) == {"0%", "25%", "50%", "75%", "100%", "max_over_min",
                           "same_program", "cpu"}
  assert flatness["max_over_min"] == pytest.approx(
      max(v for k, v in flatness.items() if k.endswith("%"))
      / min(v for k, v in flatness.items() if k.endswith("%")))
  # The load average before, during and after, and per row: whether to trust the run.
  load = report["load"]
  assert load["threads"] == os.cpu_count() and load["max"] >= 0
  assert load["note"] in out and ("WARNING" in load["note"]) == load["shared"]
  # Per row, the cores other processes and steal took while it was timed (/proc/stat).
  for r in report["results"] + list(report["ds_flatness"].values()):
    assert set(r["cpu"]) == {"others_cores", "steal_cores"}
    assert min(r["cpu"].values()) >= 0


def _fake_cpu(monkeypatch, harness, windows):
  """harness.cpu_seconds returning, per window (others' cores, steal cores), two
  snapshots 10 s apart in which this process used 2 cores of its own."""
  snapshots, t = [], 0.0
  for others, steal in windows:
    snapshots.append({"busy": 100 * t, "steal": t, "own": 50 * t, "wall": t})
    t += 10.0
    snapshots.append({"busy": snapshots[-1]["busy"] + 10 * (others + 2),
                      "steal": snapshots[-1]["steal"] + 10 * steal,
                      "own": snapshots[-1]["own"] + 20, "wall": t})
  calls = iter(snapshots)
  monkeypatch.setattr(harness, "cpu_seconds", lambda: next(calls))


def test_load_monitor_warns_when_another_job_shares_the_cores(monkeypatch):
  import harness  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(os, "getloadavg", lambda: (1.9, 0.0, 0.0))  # not the verdict
  cases = {((0.02, 0.0), (0.05, 0.01)): False,  # quiet: the benchmark's own CPU only
           ((0.02, 0.0), (1.0, 0.0)): True,  # another job during the run
           ((0.6, 0.0), (0.0, 0.0)): True,  # busy before it started
           ((0.0, 0.0), (0.0, 0.4)): True}  # a neighbour on the host (steal)
  for windows, shared in cases.items():
    _fake_cpu(monkeypatch, harness, windows)
    with harness.LoadMonitor(threads=2, interval_s=60, settle_s=0) as load:
      pass
    summary = load.summary()
    assert summary["shared"] == shared, windows
    assert summary["note"].startswith("WARNING: another job shared the cores") == shared
    assert summary["cpu"]["during"]["others_cores"] == pytest.approx(windows[1][0])
    assert summary["cpu"]["before"]["steal_cores"] == pytest.approx(windows[0][1])


def test_load_monitor_falls_back_to_the_load_average(monkeypatch):
  import harness  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(harness, "cpu_seconds", lambda: None)  # no /proc/stat
  loads = iter([0.3, 1.8, 2.2, 1.9])
  monkeypatch.setattr(os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
  with harness.LoadMonitor(threads=2, interval_s=60, settle_s=0) as load:
    load.now()  # 1.8
    load.now()  # 2.2: the benchmark's own 2 threads, and a little more
  quiet = load.summary()
  assert (quiet["before"], quiet["max"], quiet["after"]) == (0.3, 2.2, 1.9)
  assert not quiet["shared"] and "WARNING" not in quiet["note"]
  assert quiet["cpu"] == {"before": None, "during": None}
  loads = iter([0.3, 4.1, 2.0])
  with harness.LoadMonitor(threads=2, interval_s=60, settle_s=0) as load:
    load.now()  # 4.1: another job
  busy = load.summary()
  assert busy["shared"] and busy["note"].startswith("WARNING: another job shared the cores")
  loads = iter([1.7, 2.0])  # busy before the run started
  with harness.LoadMonitor(threads=2, interval_s=60, settle_s=0) as load:
    pass
  assert load.summary()["shared"]


def test_train_step_quick_has_the_expected_rows():
  out = _run("train_step.py", "--quick", "--compilation_cache")
  rows = _table_rows(out)
  assert [(r[0], r[2]) for r in rows] == [
      ("coughjax", "1"), ("coughjax", "2"), ("torch paper-style", "–"),
      ("torch 16-clip chunks", "–")]
  for r in rows:
    assert float(r[3]) > 0 and float(r[8]) > 0  # step s, peak RSS
  # The trainer loop beside the bare step, same process.
  (loop,) = [l for l in out.splitlines() if l.startswith("trainer.fit's loop")]
  assert re.search(r"overhead [+-]\d+\.\d%", loop), loop


def test_train_step_quick_times_the_gru_against_its_twin():
  out = _run("train_step.py", "--quick", "--compilation_cache", "--variant=gru", "--noloop",
             "--devices=1")
  rows = _table_rows(out)
  assert [r[0] for r in rows] == ["coughjax", "coughjax", "torch paper-style",
                                  "torch 16-clip chunks"]
  for r in rows:
    assert float(r[3]) > 0  # step s


def test_features_quick_prints_every_row(coswara_ci, tmp_path):
  out = _run("features.py", "--quick", f"--data={coswara_ci}", f"--json={tmp_path}/f.json")
  rows = {r[0]: r for r in _table_rows(out)}
  assert list(rows) == ["python_speech_features", "coughjax numpy (float64)",
                        "coughjax jax jit (float32)", "float64 FFT of the frames alone (floor)"]
  assert float(rows["coughjax numpy (float64)"][3]) <= 1e-4  # max abs diff vs psf
  for r in rows.values():
    assert float(r[1].replace(",", "")) > 0 and r[2].endswith("x")
  assert (tmp_path / "f.json").is_file()


def test_input_pipeline_quick_prints_every_row(tmp_path):
  out = _run("input_pipeline.py", "--quick", f"--workdir={tmp_path}/w",
             f"--json={tmp_path}/i.json")
  rows = [r for r in _table_rows(out) if r[0] != "participants"]
  assert [r[0] for r in rows] == ["40", "80"]
  for r in rows:
    loader, step = (float(r[i].replace(",", "")) for i in (5, 7))
    assert loader > step > 0 and float(r[9]) > 0  # pairs/s; pre-training peak RSS
    assert int(r[10].replace(",", "")) > 0 and float(r[12]) > 0  # coughjax.embed
  assert "pre-training peak RSS, largest minus smallest" in out
  assert "python -m coughjax.embed peak RSS, largest minus smallest" in out
  assert (tmp_path / "i.json").is_file()
  assert not list((tmp_path / "w").iterdir())  # the feature caches are deleted


def test_many_runs_quick_prints_every_mode(tmp_path):
  out = _run("many_runs.py", "--quick", f"--json={tmp_path}/m.json")
  rows = [r for r in _table_rows(out) if r[0] != "mode"]
  assert [r[0] for r in rows] == ["one by one", "at once, map", "at once, vmap"] * 2
  assert all(float(r[-2].replace(",", "")) > 0 for r in rows)  # runs / hour, runs x steps / s
  assert rows[0][-1] == rows[3][-1] == "1.00x"
  assert json.loads((tmp_path / "m.json").read_text())["runs_per_hour"]["at once, map"] > 0


def test_timing_noise_times_one_program_under_every_label(tmp_path):
  out = _run("timing_noise.py", "--quick", f"--json={tmp_path}/n.json")
  rows = _table_rows(out)
  assert [r[:2] for r in rows] == [["2", "2 x 0.01"], ["2", "3 x 0.01"]]
  report = json.loads((tmp_path / "n.json").read_text())
  assert report["labels"] == 3 and len(report["spread"]) == 2
  for s in report["spread"]:
    (value,) = s["max_over_min_by_round"]  # one round
    assert value >= 1.0
  assert report["load"]["note"] in out
