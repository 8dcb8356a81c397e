"""coughjax.reproduce: a paper table as a study on the evaluation protocol, the
paper's numbers beside ours."""

import numpy as np
import pytest

from coughjax import evaluate
from coughjax import paper
from coughjax import reproduce
from coughjax.protocol import runs
from coughjax.protocol.scores import Scores


def test_workdirs_are_keyed_by_their_overrides_and_protocol(tmp_path):
  def name(**kwargs):
    return reproduce.make_plan(3, tmp_path, runlocal=True, **kwargs).workdir.name

  plain = name(k=2)
  assert plain == "table3_runlocal_k2r1s0"
  assert name(k=2) == plain
  others = {name(k=3), name(k=2, repeats=2), name(k=2, seed=1),
            name(k=2, downstream_set=["data.name=coswara"]),
            name(k=2, pretrain_set=["data.name=coswara"]),
            name(k=2, downstream_set=["num_epochs=3", "num_epochs=4"])}
  assert len(others) == 6 and plain not in others
  assert name(k=2, downstream_set=("data.name=coswara",)) == name(
      k=2, downstream_set=["data.name=coswara"])
  assert reproduce.workdir_name("table1") == "table1"
  assert reproduce.workdir_name("table1", True) == "table1_runlocal"


def test_cp_rows_pretrain_once_per_repeat_on_a_pool_without_the_evaluated_data(tmp_path):
  plan = reproduce.make_plan(3, tmp_path, runlocal=True, k=2, repeats=2)
  assert [r.name for r in plan.rows] == list(paper.TABLES[3])
  todo = runs.prepare(plan, write=False)  # the data and the pool's disjointness checked
  pretrainings = [u for u in todo if u.is_pretraining]
  assert sorted(u.name for u in pretrainings) == sorted(
      f"pretrain/transformer_m{m}/r{r}pool-name_synthetic"
      for m in (0, 25, 50, 75, 100) for r in (0, 1))
  for unit in (u for u in todo if u.row):
    (need,) = unit.needs
    assert need.repeat == unit.repeat and need.fold is None  # every fold's
    for part in unit.parts:
      config = part.config()
      assert config.encoder_a.checkpoint == str(need.folder)
      assert (config.data.fold, config.data.fold_repeat) == (part.fold, part.repeat)
      assert config.data.seed != need.config().data.seed  # other recordings
  assert not tmp_path.joinpath("reproduce").exists()  # nothing written


def test_bad_rows_tables_and_overrides_stop_before_anything_is_written(tmp_path):
  with pytest.raises(ValueError, match=r"\['gru'\] are not rows of Table 3"):
    reproduce.make_plan(3, tmp_path, rows=["gru"])
  with pytest.raises(ValueError, match="--table must be one of"):
    reproduce.make_plan(6, tmp_path)
  with pytest.raises(ValueError, match="override 'num_epochs=x'"):
    reproduce.make_plan(2, tmp_path, pretrain_set=["num_epochs=x"])
  plan = reproduce.make_plan(1, tmp_path, rows=["gru", "gru_cp_ft"])
  assert [r.name for r in plan.rows] == ["gru", "gru_cp_ft"]
  assert not list(tmp_path.iterdir())


def _scores(rng, labels, k, signal):
  """A row's out-of-fold scores over 2 repeats of k folds, `signal` apart."""
  n = len(labels)
  scores = rng.random((2, n)) + signal * labels
  return Scores(keys=[f"r{i}" for i in range(n)], labels=labels, strata=[""] * n,
                scores=scores / scores.max(), units=[[{"seconds": 60.0}] * k] * 2,
                folds=np.tile((np.arange(n) // 3) % k, (2, 1)))


def test_the_report_puts_the_papers_numbers_beside_ours(tmp_path):
  plan = reproduce.make_plan(1, tmp_path, rows=["gru", "gru_cp_ft", "transformer_cp_ft"],
                             k=3, repeats=2)
  rng = np.random.default_rng(0)
  labels = np.arange(90) % 3 == 0
  results = {reproduce.SETTING: {n: _scores(rng, labels.astype(int), 3, s) for n, s in
                                 (("gru", 0.2), ("gru_cp_ft", 0.5),
                                  ("transformer_cp_ft", 2.0))}}
  text = reproduce.format_report(plan, 1, results, "python -m coughjax.reproduce (test)")
  assert "3-fold cross-validation over participants" in text and "Commit: `" in text
  lines = [l for l in text.splitlines() if l.startswith("| ")]
  ours, theirs = ({n: next(l for l in lines if l.startswith(f"| {n} |"))
                   for n in ("gru", "gru_cp_ft")} for lines in (lines, lines[::-1]))
  # Ours, with the paper's AUC as the last column; gru_cp_ft is Table 2's bilinear row.
  assert ours["gru"].endswith("| 84.43 |") and ours["gru_cp_ft"].endswith("| 87.25 |")
  assert "| 87.25 | 82.62 | 71.99 | 83.65 | – | Table 2: Table 2's bilinear" in (
      theirs["gru_cp_ft"])
  assert theirs["gru"] == "| gru | 84.43 | 82.67 | 65.60 | 81.76 | 73.15 | Table 1 |"
  # The table's claim: its first row against each other, Holm over both.
  claim = text.split("## The table's claim: transformer_cp_ft scores higher than each "
                     "other row (Holm over 2)", 1)[1]
  assert "| paper | transformer_cp_ft | gru |" in claim and "**holds**" in claim
  assert "Cost: rows 18 min" in text


def test_gru_cp_is_compared_with_the_bilinear_row(tmp_path):
  # Table 1's GRU-CP fine-tuned row repeats Table 2's cosine row; ours is bilinear.
  assert paper.TABLE1["gru_cp_ft"]["auc"] == paper.TABLE2["gru_cp_cosine_ft"]["auc"]
  row = paper.row_for_variant("gru_cp_ft")
  assert (row["auc"], row["accuracy"]) == (87.25, 83.65)
  ref, source = paper.reference("gru_cp_ft")
  assert ref == row and source.startswith("Table 2") and "bilinear" in source
  assert paper.reference("gru_cp_cosine_ft") == (paper.TABLE2["gru_cp_cosine_ft"],
                                                 "Table 2")
  assert paper.reference("transformer_cp_ft") == (paper.TABLE1["transformer_cp_ft"],
                                                  "Table 1")
  assert paper.row_for_variant("ensemble") == paper.TABLE5["ens_transformer_cp_ds50"]
  assert paper.reference("no_such_variant") is None
  # A single launch.py run's report says where its paper numbers come from.
  run_result = {k: dict(auc=80.0, precision=70.0, recall=60.0, accuracy=75.0)
                for k in ("recording", "clip")}
  evaluate.write_report(tmp_path, "gru_cp_ft", [run_result], "synthetic", ref, source)
  md = (tmp_path / "results.md").read_text()
  assert "Table 2" in md and "bilinear" in md and "auc 87.25" in md and "87.08" in md
