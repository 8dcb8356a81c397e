"""Reading a workdir (`coughjax.checkpoints`) without the training loop. Refused
checkpoints (another format, NaN, unreadable files) are tested where the trainer
writes them: tests/test_trainer.py."""

import pathlib
import subprocess
import sys

import pytest

from coughjax import checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_the_serving_path_does_not_import_the_trainer():
  """Loading a model (predict, embed, export, probe, the shipped encoders) reads
  checkpoints through coughjax.checkpoints alone: no coughjax.train module, with its
  signal handling and checkpoint policy, is imported."""
  code = ("import sys\n"
          "import coughjax.predict, coughjax.embed, coughjax.export, coughjax.probe\n"
          "import coughjax.inputs, coughjax.encoders, coughjax.checkpoints\n"
          "print(sorted(m for m in sys.modules if m.startswith('coughjax.train')))\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                       text=True, timeout=300, check=True).stdout
  assert out.strip() == "[]"


def test_an_empty_folder_has_no_checkpoint_to_read(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no checkpoint found"):
    checkpoints.restore_params(tmp_path)
  assert not any(tmp_path.iterdir())  # a reader creates nothing
