"""coughjax: self-supervised respiratory-sound representations in JAX/Flax.

A reimplementation of Xue & Salim, "Exploring Self-Supervised Representation
Ensembles for COVID-19 Cough Classification" (KDD 2021).

  encoder = coughjax.load_encoder("runs/transformer_m50")   # or a shipped name
  classifier = coughjax.load_classifier("runs/ensemble")

Importing coughjax stays light: these load JAX and the models on first use.
"""

import importlib

__version__ = "0.1.0"

# Public name -> "module:attribute", imported on first access (PEP 562).
_LAZY = {
    "load_encoder": "coughjax.embed:load_encoder",
    "load_classifier": "coughjax.predict:load_classifier",
}


def __getattr__(name):
  if name not in _LAZY:
    raise AttributeError(f"module 'coughjax' has no attribute {name!r}")
  module, attr = _LAZY[name].split(":")
  value = getattr(importlib.import_module(module), attr)
  globals()[name] = value
  return value


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
