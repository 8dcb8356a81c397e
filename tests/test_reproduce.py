"""coughjax.reproduce: each workdir belongs to one set of overrides."""

import json
import pathlib

from coughjax import paper
from coughjax import reproduce
from coughjax.train import run as run_lib

_METRICS = ("auc", "precision", "recall", "accuracy")


def _fake_run(trained):
  def run(config, workdir):
    """Records what ran where; a downstream run writes a results.json."""
    workdir = pathlib.Path(workdir)
    trained.append((workdir.name, config.task, config.data.name))
    workdir.mkdir(parents=True, exist_ok=True)
    if config.task == "downstream":
      summary = {f"{m}_{s}": 50.0 for m in _METRICS for s in ("mean", "std")}
      (workdir / "results.json").write_text(json.dumps(
          {"dataset": config.data.name, "summary": {"recording": dict(summary, avg_f1=50.0)}}))
  return run


def test_workdirs_are_keyed_by_their_overrides(tmp_path, monkeypatch):
  trained = []
  monkeypatch.setattr(run_lib, "run", _fake_run(trained))
  table = 3  # Transformer-CP rows: each pre-trains, then trains downstream
  rows = paper.TABLES[table]

  def reproduce_with(**sets):
    """({pre-training workdirs}, {downstream workdirs: data.name}) of one call."""
    trained.clear()
    reproduce.run_table(table, tmp_path, runlocal=True, **sets)
    return ({n for n, t, _ in trained if t == "pretrain"},
            {n: d for n, t, d in trained if t == "downstream"})

  pre, down = reproduce_with()
  assert set(down) == {f"{v}_runlocal" for v in rows}  # no overrides: runs/<variant>
  assert pre == {"transformer_m0_runlocal", "transformer_m25_runlocal",
                 "transformer_m50_runlocal", "transformer_m75_runlocal",
                 "transformer_m100_runlocal"}
  # Other downstream overrides: other rows' workdirs, the same pre-trainings.
  pre2, down2 = reproduce_with(downstream_set=["data.name=coswara"])
  assert pre2 == pre and len(down2) == len(rows) and not set(down2) & set(down)
  assert set(down2.values()) == {"coswara"}
  # Other pre-training overrides: other pre-trainings, and other rows from them.
  pre3, down3 = reproduce_with(downstream_set=["data.name=coswara"],
                               pretrain_set=["num_epochs=2"])
  assert len(pre3) == len(pre) and not pre3 & pre
  assert len(down3) == len(rows) and not set(down3) & (set(down) | set(down2))
  # The same overrides again: the rows' results are reused (pre-trainings resume,
  # i.e. return at once when finished).
  pre4, down4 = reproduce_with(downstream_set=["data.name=coswara"],
                               pretrain_set=["num_epochs=2"])
  assert pre4 == pre3 and not down4


def test_workdir_names():
  assert reproduce.workdir_name("gru") == "gru"
  assert reproduce.workdir_name("gru", True) == "gru_runlocal"
  a = reproduce.workdir_name("gru", downstream=["data.name=coswara"])
  assert a.startswith("gru-") and a != reproduce.workdir_name(
      "gru", pretrain=["data.name=coswara"])
  assert a == reproduce.workdir_name("gru", downstream=("data.name=coswara",))
