"""Shared bits of the command-line tools: quiet logs by default, the repository's configs.

The tools (`coughjax.predict`, `coughjax.embed`, `coughjax.probe`,
`coughjax.export`, `python -m coughjax.encoders`) print results; the libraries they
call log progress at INFO (Orbax alone writes ~25 lines per checkpoint read). So
unless `--verbosity` (absl's flag) is given, only warnings and errors reach stderr.
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags
from absl import logging

REPO = pathlib.Path(__file__).resolve().parents[1]


def quiet_logging() -> None:
  """Warnings and errors only, unless --verbosity was given (e.g. --verbosity=0 for
  INFO). Call first thing in a tool's main()."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def config_file(name: str) -> str:
  """Path of configs/<name> in the repository (the config files live beside the
  package, as for launch.py), for `config_flags.DEFINE_config_file` defaults."""
  path = REPO / "configs" / name
  if not path.is_file():
    raise FileNotFoundError(f"{path}: not found; coughjax's tools read the config files "
                            "of the repository (run from a clone: pip install -e .)")
  # The config files import `configs.common`: make the repository importable from
  # any working directory.
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  return str(path)
