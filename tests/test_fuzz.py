"""Fuzzing the readers of untrusted input: audio files and data-source metadata.

Each test runs one mode of tests/fuzz_readers.py in a child process (seeded cases;
`COUGHJAX_FUZZ_SEED` picks other ones) and fails if any case raised anything but
the documented error, returned something malformed, kept a path outside its root,
or took too long, or if the child crashed (a native decoder) or hung.
"""

import json
import os
import subprocess
import sys

import pytest

import conftest

SEED = int(os.environ.get("COUGHJAX_FUZZ_SEED", "0"))
TIMEOUT = 120  # seconds for a whole mode; each takes a few on a 2-core machine


def _fuzz(mode: str, *files: str) -> dict:
  cmd = [sys.executable, str(conftest.REPO / "tests" / "fuzz_readers.py"), mode, str(SEED),
         *files]
  try:
    proc = subprocess.run(cmd, cwd=conftest.REPO, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
  except subprocess.TimeoutExpired as e:
    last = (e.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
    pytest.fail(f"fuzz {mode} hung for {TIMEOUT} s; last case started: {last}")
  if proc.returncode:
    cases = [l for l in proc.stderr.splitlines() if l.startswith("case ")]
    pytest.fail(f"fuzz {mode} crashed (exit {proc.returncode}) in {cases[-1:]}:\n"
                f"{proc.stderr[-3000:]}")
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["failures"] == [], "\n".join(report["failures"][:20])
  return report


def test_fuzz_audio_reader_random_bytes_and_odd_headers():
  report = _fuzz("audio")
  assert report["cases"] >= 200


def test_fuzz_audio_reader_truncated_and_corrupted_real_recordings():
  real = []
  coswara = conftest.coswara_ci_root()
  if coswara is not None:
    real.append(str(sorted(coswara.glob("audio/*/cough-heavy.flac"))[0]))
  cough = conftest.covid19_cough_root()
  if cough is not None:
    meta = json.loads((cough / "metadata.json").read_text())
    for source in ("call-center", "telegram"):  # 8 kHz stereo and 48 kHz mono MP3
      real.append(str(cough / "raw" / next(r["filename"] for r in meta
                                           if r["source"] == source)))
  if not real:
    pytest.skip("no real recordings (set COUGHJAX_COSWARA_CI or COUGHJAX_COVID19_COUGH)")
  report = _fuzz("real", *real)
  assert report["cases"] >= 50 * len(real)
  assert report["returned"] > 0  # some cuts still decode: the cases reach the decoders


def test_fuzz_metadata_readers():
  report = _fuzz("metadata")
  assert report["cases"] >= 300 and report["returned"] > 0
