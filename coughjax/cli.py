"""Shared bits of the command-line tools: quiet logs, and a user's mistakes in one line.

The tools (`launch.py`, `python -m coughjax.predict`, `.embed`, `.export`,
`.probe`, `.reproduce`, `.cache`, `.encoders`, `.studies.*`) print results; the
libraries they call log progress at INFO (Orbax alone writes ~25 lines per checkpoint
read). So unless `--verbosity` (absl's flag) is given, only warnings and errors reach
stderr (`quiet_logging`).

A mistake of the user's -- a config value, a label, a path, a model that cannot be
exported, Ctrl-C -- is reported by a command whose main is decorated with
`@cli.user_errors` as one line (the exception's message) with exit status 1 (130
for Ctrl-C), not as a traceback: the message names the file or key and what to do.
`--verbosity=1` (or higher) shows the traceback as well.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Sequence

from absl import flags
from absl import logging

# What coughjax raises for a mistake of the user's: ValueError and its subclasses
# (config.ConfigError, audio.AudioError, export.ExportError, ...), OSError on the
# paths and folders a user gives (FileNotFoundError, PermissionError, ...), and
# ImportError for an optional extra that is not installed (the message says which).
USER_ERRORS = (ValueError, OSError, ImportError)
EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


def quiet_logging() -> None:
  """Warnings and errors only, unless --verbosity was given (e.g. --verbosity=0 for
  INFO). Call first thing in a tool's main()."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def _verbose() -> bool:
  """--verbosity=1 or higher: tracebacks are wanted."""
  return flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1


def _one_line(text: str) -> str:
  return text.strip() or "(no message)"


def user_errors(main: Callable[[Sequence[str]], Any]) -> Callable[[Sequence[str]], Any]:
  """`main` with the user's mistakes (`USER_ERRORS`, Ctrl-C) reported on stderr as
  their message, without a traceback unless --verbosity >= 1, and exit status 1
  (130 for Ctrl-C)."""

  @functools.wraps(main)
  def guarded(argv):
    try:
      return main(argv)
    except KeyboardInterrupt as e:  # stopping.Interrupted says at which step
      if _verbose():
        raise
      print(_one_line(str(e) or "interrupted"), file=sys.stderr)
      sys.exit(getattr(e, "exit_code", EXIT_INTERRUPTED))  # 143 for SIGTERM
    except USER_ERRORS as e:
      if _verbose():
        raise
      print(f"error: {_one_line(str(e))} (--verbosity=1 shows where)", file=sys.stderr)
      sys.exit(EXIT_ERROR)

  return guarded
