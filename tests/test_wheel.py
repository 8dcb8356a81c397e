"""A wheel works outside the repository: `pip install .` (not editable) gives the
package, its configs and shipped encoders, and the documented `python -m coughjax.*`
commands run from any folder."""

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import soundfile as sf

from coughjax.data import synthetic
from tests.conftest import REPO

pytestmark = pytest.mark.wheel


def _tracked_tree(dest: pathlib.Path) -> pathlib.Path:
  """The repository's tracked and new files (what a clean clone has), copied to
  `dest`, so building leaves nothing in the checkout."""
  listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                           "--exclude-standard"], cwd=REPO, capture_output=True,
                          check=False)
  if listed.returncode:
    pytest.skip(f"not a git checkout: {listed.stderr.decode()[-200:]}")
  for name in filter(None, listed.stdout.decode().split("\0")):
    src = REPO / name
    if src.is_file() and not name.startswith(("tests/", "benchmarks/", "docs/")):
      (dest / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(src, dest / name)
  return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(site folder holding the installed wheel, a folder outside the repository)."""
  root = tmp_path_factory.mktemp("wheel")
  source = _tracked_tree(root / "source")
  # The build backend of this environment where it has one (no download), else an
  # isolated build, which fetches setuptools; skipped only where building is impossible.
  local = importlib.util.find_spec("setuptools") is not None
  built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w",
                          str(root / "dist"), str(source),
                          *(["--no-build-isolation", "--no-index"] if local else [])],
                         capture_output=True, text=True, timeout=300, check=False)
  if built.returncode:
    pytest.skip(f"cannot build a wheel here: {built.stderr[-500:]}")
  (wheel,) = (root / "dist").glob("coughjax-*.whl")
  subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                  "--target", str(root / "site"), str(wheel)], capture_output=True,
                 text=True, timeout=300, check=True)
  elsewhere = root / "elsewhere"
  elsewhere.mkdir()
  return root / "site", elsewhere


def _run(installed, *args):
  site, cwd = installed
  env = {**os.environ, "PYTHONPATH": str(site)}  # the wheel, not the checkout
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600, check=False)


def test_the_wheel_holds_the_package_configs_and_encoders(installed):
  site, _ = installed
  proc = _run(installed, "-c", (
      "import coughjax, coughjax.configs as c, coughjax.encoders as e, pathlib;"
      "print(coughjax.__file__); print(c.path('pretrain'));"
      "from coughjax import overrides; p, d = overrides.config_modules();"
      "print(d.get_config('ensemble').variant, p.get_config('transformer_m50').variant)"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  package, pretrain, variants = proc.stdout.strip().splitlines()
  assert package.startswith(str(site)) and pretrain.startswith(str(site))
  assert variants == "ensemble transformer_m50"
  assert (site / "coughjax" / "encoders" / "transformer_m50_real.msgpack").is_file()
  assert not (site / "configs").exists() and not (site / "tests").exists()


def test_documented_commands_run_from_any_folder(installed):
  _, cwd = installed
  sf.write(cwd / "a.flac", synthetic.render("synthetic://1/0/cough-heavy", 16000), 16000)
  embedded = _run(installed, "-m", "coughjax.embed", "--workdir=transformer_m50_real",
                  "--output=emb.npz", "a.flac")
  assert embedded.returncode == 0, embedded.stderr[-3000:]
  assert (cwd / "emb.npz").is_file() and "d = 64" in embedded.stdout
  cached = _run(installed, "-m", "coughjax.cache", "list")
  assert cached.returncode == 0, cached.stderr[-3000:]
  # reproduce builds every config of a table before it trains anything: a bad
  # override stops it there, in one line.
  bad = _run(installed, "-m", "coughjax.reproduce", "--table=1", "--runlocal",
             "--downstream_set=num_epochs=x")
  assert bad.returncode == 1 and bad.stderr.startswith("error: override 'num_epochs=x'"), (
      bad.stderr[-3000:])
