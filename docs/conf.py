"""Sphinx configuration of coughjax's documentation (MyST Markdown pages, an API
reference from the docstrings).

  pip install -e ".[docs]" && python -m sphinx -W -b html docs docs/_build/html
"""

import os
import pathlib
import sys

# Autodoc imports the package: from this checkout, on the CPU (no GPU needed), and
# importing a module reads no data.
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "coughjax"
author = "coughjax authors"
copyright = "coughjax authors"  # pylint: disable=redefined-builtin

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# A dataclass's "Attributes:" section documents its fields (as :ivar:), once.
napoleon_use_ivar = True

html_theme = "alabaster"
html_title = "coughjax"
