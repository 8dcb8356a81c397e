"""coughjax: self-supervised respiratory-sound representations in JAX/Flax.

A reimplementation of Xue & Salim, "Exploring Self-Supervised Representation
Ensembles for COVID-19 Cough Classification" (KDD 2021).
"""

__version__ = "0.1.0"
