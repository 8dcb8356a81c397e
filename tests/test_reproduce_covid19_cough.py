"""The covid19_cough report: log-mel statistics, baselines, the finding rule, and the
command end to end on a 60-recording slice of the real release."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import conftest
from coughjax import baselines
from coughjax import evaluate
from coughjax import reproduce_covid19_cough as rcc

REPO = rcc.pathlib.Path(__file__).resolve().parents[1]


def test_logmel_statistics_match_a_direct_computation():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(37, 64)).astype(np.float32) * 3 - 5
  got = baselines.logmel_statistics(feats)
  assert got.shape == (192,)
  x = feats.astype(np.float64)
  for band in range(64):
    col = [x[t, band] for t in range(37)]
    mean = sum(col) / 37
    std = (sum((v - mean) ** 2 for v in col) / 37) ** 0.5
    delta = sum(abs(col[t + 1] - col[t]) for t in range(36)) / 36
    np.testing.assert_allclose(got[[band, 64 + band, 128 + band]], [mean, std, delta],
                               rtol=1e-12)
  np.testing.assert_allclose(baselines.statistics_matrix([feats, feats[:5]])[1],
                             baselines.logmel_statistics(feats[:5]))
  with pytest.raises(ValueError, match=r"shape \(1, 64\)"):
    baselines.logmel_statistics(feats[:1])


def test_paired_verdict_rule():
  assert evaluate.paired_verdict([3, 4, 5, 3, 4])["verdict"] == "holds"
  assert evaluate.paired_verdict([-3, -4, -5, -3, -4])["verdict"] == "does not hold"
  assert evaluate.paired_verdict([5, -4, 3, -2, 1])["verdict"] == "cannot tell"
  # [1, 3]: mean 2 = exactly 2 SE (std sqrt(2), SE 1) -> not enough; [1.1, 3]: mean
  # 2.05 > 2 x 0.95 -> holds.
  assert evaluate.paired_verdict([1, 3])["verdict"] == "cannot tell"
  v = evaluate.paired_verdict([1.1, 3])
  assert v["verdict"] == "holds"
  np.testing.assert_allclose([v["mean"], v["std"], v["se"]],
                             [2.05, np.std([1.1, 3], ddof=1), np.std([1.1, 3], ddof=1) /
                              np.sqrt(2)])
  assert evaluate.paired_verdict([-1.1, -3])["verdict"] == "does not hold"
  # Fewer than two finite differences: no standard error, no verdict.
  assert evaluate.paired_verdict([7.0])["verdict"] == "cannot tell"
  v = evaluate.paired_verdict([3, 4, float("nan"), 5])
  assert v["n"] == 3 and v["verdict"] == "holds"
  assert evaluate.paired_verdict([0, 0, 0])["verdict"] == "cannot tell"


def test_channel_only_and_logistic_regression():
  sources = ["a", "a", "a", "a", "b", "b", "b", "b"]
  y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
  np.testing.assert_allclose(baselines.channel_only_scores(sources, y, ["b", "a", "b"]),
                             [0.25, 0.75, 0.25])
  with pytest.raises(ValueError, match=r"\['c'\]"):
    baselines.channel_only_scores(sources, y, ["c"])
  # One informative feature among noise: the fitted scores rank the test rows.
  rng = np.random.default_rng(1)
  def data(n):
    label = rng.integers(0, 2, n)
    return np.c_[label * 2.0 + rng.normal(size=n), rng.normal(size=(n, 5))], label
  (xt, yt), (xv, yv), (xs, ys) = data(80), data(20), data(40)
  scores, c = baselines.logistic_regression_scores(xt, yt, xv, yv, xs)
  assert c in baselines.C_GRID and scores.shape == (40,)
  assert evaluate.binary_metrics(ys, scores)["auc"] > 80
  with pytest.raises(ValueError, match="both labels"):
    baselines.logistic_regression_scores(xt, np.zeros(80), xv, yv, xs)


# --- the command on a slice of the real release ------------------------------------


@pytest.fixture(scope="module")
def release_slice(covid19_cough, tmp_path_factory):
  """30 call-centre + 30 Telegram recordings (distinct contents, > 6 kB so none is
  under 0.5 s), plus a copy of one Telegram file under a second name with the other
  label — the source merges the two into one unlabelled recording."""
  root = tmp_path_factory.mktemp("covid19_cough_slice")
  want = {("call-center", True): 20, ("call-center", False): 10,
          ("telegram", True): 10, ("telegram", False): 20}
  kept = conftest.copy_covid19_cough_slice(
      covid19_cough, root, want, lambda r: (r["source"], r["covid19"]), min_bytes=6000)
  twin = next(r for r in kept if r["source"] == "telegram" and not r["covid19"])
  shutil.copy(root / "raw" / twin["filename"], root / "raw" / "twin.mp3")
  kept.append(dict(twin, filename="twin.mp3", covid19=True))
  (root / "metadata.json").write_text(json.dumps(kept))
  return root


ROWS = ("transformer", "transformer_cp_ft")
SETTINGS = ("call-center", "pooled")


@pytest.fixture(scope="module")
def report(release_slice, tmp_path_factory):
  work = tmp_path_factory.mktemp("report")
  opts = rcc.Options(root=release_slice, workdir=work / "runs", seeds=2, epochs=1,
                     tables=(1,), settings=SETTINGS, rows=ROWS, runlocal=True,
                     pretrain_runs=work / "pretrain", pretrain_epochs=1, coswara_root="")
  text = rcc.run_report(opts, command="python -m coughjax.reproduce_covid19_cough ...",
                        date="2021-08-14")
  return opts, text


def _results(opts, setting, name):
  return json.loads((opts.workdir / setting / name / "results.json").read_text())


def _section(text, setting):
  """The lines of `setting`'s table section."""
  tables = text.split("## Tables", 1)[1]
  return tables.split(f"### {setting}\n", 1)[1].split("\n### ", 1)[0]


def test_report_numbers_are_the_runs_results(report):
  opts, text = report
  for setting in SETTINGS:
    section = _section(text, setting)
    assert "#### Table 1" in section
    assert "vggish_frozen | not run: needs the AudioSet VGGish weights" in section
    names = {v: f"| {v} |" for v in ROWS}
    names[rcc.LOGMEL] = f"| *{rcc.BASELINE_LABELS[rcc.LOGMEL]}* |"
    if setting == "pooled":
      names[rcc.CHANNEL] = f"| *{rcc.BASELINE_LABELS[rcc.CHANNEL]}* |"
    else:
      assert rcc.BASELINE_LABELS[rcc.CHANNEL] not in section
    for name, prefix in names.items():
      line = next(l for l in section.splitlines() if l.startswith(prefix))
      results = _results(opts, setting, name)
      s = results["summary"]["recording"]
      cells = [c.strip() for c in line[len(prefix):].split("|")[:-1]]
      ours = cells[0:8:2]
      assert ours == [f"{s[f'{m}_mean']:.2f} ({s[f'{m}_std']:.2f})"
                      for m in rcc.METRICS], (setting, name, line)
      assert cells[8] == f"{s['avg_f1']:.2f}"
      if name in ROWS:  # the paper's numbers beside ours
        assert cells[1] == f"{rcc.paper.TABLE1[name]['auc']:.2f}"
      assert results["num_runs"] == 2


def test_every_row_of_a_setting_has_the_same_splits(report):
  opts, _ = report
  for setting in SETTINGS:
    names = ROWS + (rcc.LOGMEL,) + ((rcc.CHANNEL,) if setting == "pooled" else ())
    seeds = {n: [r["split_seed"] for r in _results(opts, setting, n)["runs"]]
             for n in names}
    assert all(v == [0, 1] for v in seeds.values()), seeds
    # ... and the same test recordings, so differences are paired per seed.
    labels = {n: [r["labels"] for r in _results(opts, setting, n)["runs"]] for n in names}
    assert len({json.dumps(v) for v in labels.values()}) == 1
  # The within-source setting holds only call-centre recordings.
  assert "source_filter call-center" in _results(opts, "call-center", rcc.LOGMEL)["dataset"]


def test_findings_state_the_paired_differences(report):
  opts, text = report
  findings = text.split("## Findings", 1)[1].split("## Tables", 1)[0]
  for setting in SETTINGS:
    part = findings.split(f"### {setting}\n", 1)[1].split("\n### ", 1)[0]
    d = (np.array([r["recording"]["auc"] for r in
                   _results(opts, setting, "transformer_cp_ft")["runs"]])
         - [r["recording"]["auc"] for r in _results(opts, setting, "transformer")["runs"]])
    v = evaluate.paired_verdict(d)
    assert (f"(i-a) contrastive pre-training beats training from scratch (Transformer): "
            f"**{v['verdict']}**.") in part
    assert f"Transformer: {v['mean']:+.2f} ± {v['std']:.2f}" in part
    # Rows this report did not run are named, with no verdict invented for them.
    assert re.search(r"\(iv\) .*: \*\*cannot tell\*\*", part)
    assert "not run (ens_transformer_cp_ds50)" in part
    logmel = _results(opts, setting, rcc.LOGMEL)["summary"]["recording"]["auc_mean"]
    assert f"below the log-mel statistics baseline's ({logmel:.2f})" in part
  channel = _results(opts, "pooled", rcc.CHANNEL)["summary"]["recording"]
  assert f"channel alone gives a pooled AUC of {channel['auc_mean']:.2f}" in findings
  assert "*holds* when mean(d) > 0 and mean(d) > 2 × SE" in text


def test_report_states_data_settings_and_command(report):
  _, text = report
  assert "Date: 2021-08-14" in text and "python -m coughjax.reproduce_covid19_cough" in text
  assert "61 files in metadata.json" in text and "leaving 60 recordings" in text
  # Counts after identical files: the twin and its original are one unlabelled recording.
  assert "| call-center | positive | 20 | 20 | 20 |" in text
  assert "| telegram | positive | 11 | 10 | 10 |" in text
  assert "| telegram | negative | 20 | 19 | 19 |" in text
  assert "| telegram | unlabelled | – | 1 | – |" in text
  assert "Source confound" in text and "**Cut**: 1 downstream epochs per run (1 for rows with a VGGish" in text
  assert "Seeds: 2 per row" in text and "t-test needs 12.71 SE" in text


def test_rerun_reuses_every_run(report):
  opts, text = report
  stamps = {p: p.stat().st_mtime_ns for p in opts.workdir.rglob("results.json")}
  again = rcc.run_report(opts, command="python -m coughjax.reproduce_covid19_cough ...",
                         date="2021-08-14")
  assert {p: p.stat().st_mtime_ns for p in opts.workdir.rglob("results.json")} == stamps
  assert again.split("## Findings")[1] == text.split("## Findings")[1]
  # A workdir made with other settings is an error naming it, not a silent reuse.
  changed = rcc.dataclasses.replace(opts, epochs=3)
  with pytest.raises(ValueError, match=r"call-center/transformer holds a run with other "
                     r"settings \(num_epochs: 1 there, 3 now\)"):
    rcc.run_setting("call-center", changed, {})


def test_command_line_rejects_unknown_tables():
  proc = subprocess.run([sys.executable, "-m", "coughjax.reproduce_covid19_cough",
                         "--tables=1,9", "--root=/nonexistent"], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0
  assert "--tables: unknown table(s) [9]" in proc.stderr
