"""The documentation: the Sphinx site builds with warnings as errors, and the README
stays a short front page whose commands and links are the ones that exist."""

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

README = REPO / "README.md"


def test_the_site_builds_with_warnings_as_errors(tmp_path):
  pytest.importorskip("sphinx", reason="the docs extra: pip install -e '.[docs]'")
  pytest.importorskip("myst_parser", reason="the docs extra: pip install -e '.[docs]'")
  proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-b", "html", "-q",
                         "-d", str(tmp_path / "doctrees"), "docs", str(tmp_path / "html")],
                        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-5000:]
  html = {p.stem: p.read_text() for p in (tmp_path / "html").glob("*.html")}
  for page in ("getting_started", "data", "training", "protocol", "models", "scaling",
               "benchmarks", "reliability", "api", "reproduction_covid19_cough"):
    assert page in html, sorted(html)
  # The API reference is generated from the docstrings.
  for name in ("coughjax.embed.load_encoder", "coughjax.predict.load_classifier",
               "coughjax.export.export_encoder", "coughjax.protocol.stats",
               "coughjax.data.get_manifest", "coughjax.configs.pretrain.get_config"):
    assert f'id="{name}"' in html["api"] or f'id="module-{name}"' in html["api"], name


def test_readme_is_a_short_front_page():
  text = README.read_text()
  assert len(text.splitlines()) <= 200
  # Its links lead to files of the repository.
  for target in re.findall(r"\]\(([^)#]+)\)", text):
    if "://" not in target:
      assert (REPO / target).exists(), target
  # Its test command is the one CI runs.
  command = 'pip install -e ".[test]" && pytest'
  assert f"```bash\n{command}\n```" in text
  assert (REPO / ".ci" / "run").read_text().rstrip().splitlines()[-1] == command
  # Timings live in benchmarks/README.md only.
  assert not re.search(r"\d+(\.\d+)? ?(ms|µs|s|min|minutes|steps/s)\b", text)
