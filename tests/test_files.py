"""Outputs: written atomically with the mode a plain open() gives under the umask."""

import contextlib
import os
import stat

import pytest

from coughjax import export
from coughjax import files
from coughjax.protocol import runs


@contextlib.contextmanager
def umask(mask):
  previous = os.umask(mask)
  try:
    yield
  finally:
    os.umask(previous)


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_write_follows_the_umask(tmp_path, mask):
  with umask(mask):
    files.atomic_write(tmp_path / "a.txt", lambda f: f.write(b"x"))
    with open(tmp_path / "b.txt", "w", encoding="utf-8") as f:  # what open() gives
      f.write("x")
    assert files.umask() == mask
  assert _mode(tmp_path / "a.txt") == _mode(tmp_path / "b.txt") == 0o666 & ~mask
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no temporary


def test_a_report_and_an_export_are_0644_under_umask_022(tmp_path, monkeypatch):
  # A study's report, written by the protocol's command (the runs themselves stubbed).
  plan = runs.Plan(tmp_path / "study", data=(), rows=(), settings=())
  monkeypatch.setattr(runs, "prepare", lambda *args, **kwargs: [])
  monkeypatch.setattr(runs, "run_units", lambda *args, **kwargs: None)
  monkeypatch.setattr(runs, "collect", lambda *args, **kwargs: {"all": {}})
  with umask(0o022):
    runs.command_main(plan, "coughjax.protocol", processes=1, scheduler="", dry_run=False,
                      report=tmp_path / "report.md",
                      format_report=lambda results, command, progress: "# report\n")
    out = export.export_encoder("transformer_m50_real", tmp_path / "export", batch=2)
  assert (tmp_path / "report.md").read_text() == "# report\n"
  written = [tmp_path / "report.md", out / export.PROGRAM, out / export.SIDECAR]
  assert {p.name: oct(_mode(p)) for p in written} == {p.name: "0o644" for p in written}
