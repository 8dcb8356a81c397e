"""Shared test set-up: 4 fake CPU devices, the real Coswara subset, a temp cache."""

import os
import pathlib

# Multi-device tests compare 1 vs 4 devices; the flag must be set before jax starts.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]


def coswara_ci_root() -> pathlib.Path | None:
  """The real Coswara test subset: $COUGHJAX_COSWARA_CI, else ../shared beside the repo."""
  candidates = [os.environ.get("COUGHJAX_COSWARA_CI"),
                REPO.parent / "shared" / "data" / "coswara_ci"]
  for c in candidates:
    if c and (pathlib.Path(c) / "labels.csv").is_file():
      return pathlib.Path(c)
  return None


@pytest.fixture(scope="session")
def coswara_ci() -> pathlib.Path:
  root = coswara_ci_root()
  if root is None:
    pytest.skip("real Coswara subset not found (set COUGHJAX_COSWARA_CI)")
  return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
  """Every test gets a feature cache of its own unless the environment pins one."""
  if "COUGHJAX_CACHE" not in os.environ:
    monkeypatch.setenv("COUGHJAX_CACHE", str(tmp_path_factory.mktemp("cache")))
