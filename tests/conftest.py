"""Shared test set-up: CPU, compilation cache, the real data subsets, a temp cache.

The test session itself runs on one CPU device, as users do. Multi-device tests run
their JAX code in a subprocess with `--xla_force_host_platform_device_count=4`
(`run_script`): with more fake devices than cores, XLA:CPU can deadlock the
collectives of heavy programs (VGGish) waiting for a device thread that never gets
scheduled, so fake devices are confined to the tests that need them.
"""

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same small models (every downstream variant, xdist workers):
# a persistent compilation cache shared by the test processes saves most of it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(
    pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_script(script: str, *args: str, devices: int = 1, timeout: float = 600,
               env: dict | None = None) -> dict:
  """Runs tests/<script> with `devices` fake CPU devices; returns its last stdout
  line parsed as JSON (the script's report)."""
  flags = (os.environ.get("XLA_FLAGS", "")
           + f" --xla_force_host_platform_device_count={devices}").strip()
  proc = subprocess.run([sys.executable, str(REPO / "tests" / script), *args], cwd=REPO,
                        env={**os.environ, "XLA_FLAGS": flags, **(env or {})},
                        capture_output=True, text=True, timeout=timeout, check=False)
  if proc.returncode != 0:
    raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-6000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(script: str, *args: str, num_processes: int = 2, devices: int = 1,
                  timeout: float = 600) -> list[subprocess.CompletedProcess]:
  """Runs `script` (a path under the repository) as `num_processes` processes of one
  multi-process JAX run on loopback (gloo), each with `devices` fake CPU devices,
  with `args` and --coordinator/--num_processes/--process_id; their results, in
  process order (stdout and stderr together). A process still running at the
  timeout (stuck waiting for another) is killed."""
  port = free_port()
  flags = (os.environ.get("XLA_FLAGS", "")
           + f" --xla_force_host_platform_device_count={devices}").strip()
  procs = [subprocess.Popen(
      [sys.executable, str(REPO / script), *args, f"--coordinator=127.0.0.1:{port}",
       f"--num_processes={num_processes}", f"--process_id={i}"],
      cwd=REPO, env={**os.environ, "XLA_FLAGS": flags}, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(num_processes)]
  try:
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  return [subprocess.CompletedProcess(p.args, p.returncode, out, "")
          for p, out in zip(procs, outs)]


@contextlib.contextmanager
def deadline(seconds: int):
  """Raises TimeoutError in the block after `seconds` (SIGALRM: main thread only),
  so that a regression that hangs (reading /dev/zero, a fifo) fails instead."""

  def expire(*_):
    raise TimeoutError(f"still running after {seconds} s")

  previous = signal.signal(signal.SIGALRM, expire)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


_opened: list[str] | None = None


def _record_open(event, args):
  if _opened is not None and event in ("open", "os.open") and isinstance(
      args[0], (str, bytes, os.PathLike)):
    _opened.append(os.path.realpath(os.fsdecode(args[0])))


@contextlib.contextmanager
def opened_files():
  """The paths (resolved) that Python code opens in the block, from the "open"
  audit events: every file the feature cache hashes or a source reads. (An audit
  hook stays for the process; outside these blocks it records nothing.)"""
  global _opened
  if not getattr(opened_files, "hooked", False):
    sys.addaudithook(_record_open)
    opened_files.hooked = True
  _opened = []
  try:
    yield _opened
  finally:
    _opened = None


def _shared_data(env: str, name: str, marker: str) -> pathlib.Path | None:
  """A real data set for the tests: $`env`, else ../shared/data/`name` beside the
  repository; a candidate counts only if it holds `marker`."""
  for c in (os.environ.get(env), REPO.parent / "shared" / "data" / name):
    if c and (pathlib.Path(c) / marker).is_file():
      return pathlib.Path(c)
  return None


def coswara_ci_root() -> pathlib.Path | None:
  """The real Coswara test subset (CC BY 4.0)."""
  return _shared_data("COUGHJAX_COSWARA_CI", "coswara_ci", "labels.csv")


def covid19_cough_root() -> pathlib.Path | None:
  """The real covid19_cough release copy (CC0)."""
  return _shared_data("COUGHJAX_COVID19_COUGH", "covid19_cough", "metadata.json")


@pytest.fixture(scope="session")
def coswara_ci() -> pathlib.Path:
  root = coswara_ci_root()
  if root is None:
    pytest.skip("real Coswara subset not found (set COUGHJAX_COSWARA_CI)")
  return root


@pytest.fixture(scope="session")
def covid19_cough() -> pathlib.Path:
  root = covid19_cough_root()
  if root is None:
    pytest.skip("real covid19_cough release not found (set COUGHJAX_COVID19_COUGH)")
  return root


def copy_covid19_cough_slice(release: pathlib.Path, dest: pathlib.Path,
                              counts: dict, key, min_bytes: int = -1,
                              always: tuple[str, ...] = ()) -> list[dict]:
  """Copies a small slice of a covid19_cough release into dest/raw.

  Walks the release's records in order and takes, for each `key(record)` in
  `counts`, that many files of distinct contents larger than `min_bytes`; files
  named in `always` are taken as well (uncounted). Returns the taken records, in
  release order; the caller writes dest/metadata.json (maybe with changes).
  """
  (dest / "raw").mkdir(parents=True, exist_ok=True)
  wanted, kept, seen = dict(counts), [], set()
  for rec in json.loads((release / "metadata.json").read_text()):
    src = release / "raw" / rec["filename"]
    forced = rec["filename"] in always
    if not forced and not (wanted.get(key(rec)) and src.stat().st_size > min_bytes):
      continue
    content = src.read_bytes()
    if not forced:
      if content in seen:
        continue
      wanted[key(rec)] -= 1
    seen.add(content)
    shutil.copy(src, dest / "raw" / rec["filename"])
    kept.append(rec)
  assert not any(wanted.values()), wanted
  return kept


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
  """Every test gets a feature cache of its own unless the environment pins one."""
  if "COUGHJAX_CACHE" not in os.environ:
    monkeypatch.setenv("COUGHJAX_CACHE", str(tmp_path_factory.mktemp("cache")))
