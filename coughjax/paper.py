"""The paper's reported results, kept as data with their source.

Xue & Salim, "Exploring Self-Supervised Representation Ensembles for COVID-19 Cough
Classification", KDD 2021, Tables 1-6 (test set of COVID-19 Sounds, mean over 5 runs;
Table 6 on an RTX 2080 Ti with PyTorch). Values in %, Table 6 in µs per instance.

The tables are kept as printed, with one exception in what a report compares
against: Table 1's GRU-CP fine-tuned row (AUC 87.08, accuracy 83.15, precision 81.61,
recall 71.72) repeats Table 2's *cosine* GRU-CP row digit for digit, while Table 2's
*bilinear* GRU-CP row is 87.25 / 83.65 / 82.62 / 71.99. The paper's contrastive
pre-training uses bilinear similarity (§4.1.3, and §5.3.3: bilinear "achieves
consistent better performance with both structures"), Table 1's Transformer-CP row
equals Table 2's bilinear Transformer-CP row, and our `gru_cp_ft` starts from the
bilinear pre-training (configs/pretrain.py:gru). So `gru_cp_ft` is compared with
Table 2's bilinear row (`reference`); Table 1's entry is taken to be a copy of the
cosine row.
"""

from __future__ import annotations

from typing import Optional

SOURCE = "Xue & Salim, KDD 2021 (doi:10.1145/3447548.3467263)"

# Table 1: AUC, precision, recall, accuracy, average F1 (means; stds omitted).
TABLE1 = {
    "vggish": dict(auc=76.14, precision=73.17, recall=53.19, accuracy=74.88, avg_f1=61.60),
    "vggish_frozen": dict(auc=85.02, precision=78.55, recall=67.42, accuracy=80.71,
                          avg_f1=72.56),
    "vggish_ft": dict(auc=87.34, precision=83.15, recall=69.49, accuracy=83.12, avg_f1=75.71),
    "gru": dict(auc=84.43, precision=82.67, recall=65.60, accuracy=81.76, avg_f1=73.15),
    "transformer": dict(auc=87.60, precision=80.64, recall=71.53, accuracy=82.73,
                        avg_f1=75.81),
    "gru_cp_frozen": dict(auc=83.20, precision=78.63, recall=63.43, accuracy=79.63,
                          avg_f1=70.22),
    "gru_cp_ft": dict(auc=87.08, precision=81.61, recall=71.72, accuracy=83.15, avg_f1=76.35),
    "transformer_cp_frozen": dict(auc=84.34, precision=78.56, recall=64.94, accuracy=80.02,
                                  avg_f1=71.10),
    "transformer_cp_ft": dict(auc=88.83, precision=81.99, recall=73.07, accuracy=83.74,
                              avg_f1=77.27),
}
# Table 2: similarity metric (AUC, recall, precision, accuracy); bilinear rows are the
# *_cp_ft variants.
TABLE2 = {
    "gru_cp_cosine_ft": dict(auc=87.08, precision=81.61, recall=71.72, accuracy=83.15),
    "gru_cp_ft": dict(auc=87.25, precision=82.62, recall=71.99, accuracy=83.65),
    "transformer_cp_cosine_ft": dict(auc=87.02, precision=81.73, recall=67.79,
                                     accuracy=82.06),
    "transformer_cp_ft": dict(auc=88.83, precision=81.99, recall=73.07, accuracy=83.74),
}
# Table 3: CP masking rate (Transformer-CP fine-tuned, no DS masking).
TABLE3 = {
    "transformer_cp_m0_ft": dict(auc=88.83, accuracy=83.74),
    "transformer_cp_m25_ft": dict(auc=89.17, accuracy=83.84),
    "transformer_cp_m50_ft": dict(auc=89.42, accuracy=84.26),
    "transformer_cp_m75_ft": dict(auc=89.13, accuracy=83.62),
    "transformer_cp_m100_ft": dict(auc=88.37, accuracy=83.41),
}
# Table 4: ensembles.
TABLE4 = {
    "ens_vggish_transformer": dict(auc=87.58, accuracy=83.10),
    "ens_gru_transformer": dict(auc=87.24, accuracy=83.20),
    "ens_gru_cp_transformer_cp": dict(auc=88.90, accuracy=84.04),
}
# Table 5: Transformer-CP x2 (CP mask 50 %) with DS masking.
TABLE5 = {
    "ens_transformer_cp_ds0": dict(auc=88.77, accuracy=83.75),
    "ens_transformer_cp_ds25": dict(auc=89.02, accuracy=84.15),
    "ens_transformer_cp_ds50": dict(auc=90.03, accuracy=84.43),
    "ens_transformer_cp_ds75": dict(auc=89.22, accuracy=84.03),
    "ens_transformer_cp_ds100": dict(auc=89.55, accuracy=83.93),
}
TABLES = {1: TABLE1, 2: TABLE2, 3: TABLE3, 4: TABLE4, 5: TABLE5}

# Table 6: inference time per instance, µs (RTX 2080 Ti, PyTorch).
TABLE6_US = {
    "VGGish": 6.39, "VGGish (pre-trained)": 6.39, "GRU": 8.34, "Transformer": 8.48,
    "GRU-CP": 8.60, "Transformer-CP": 8.52, "VGGish+Transformer": 12.58,
    "GRU+Transformer": 14.26, "GRU-CP+Transformer-CP": 14.36,
    "Transformer-CP x2, DS 0%": 18.86, "Transformer-CP x2, DS 25%": 24.53,
    "Transformer-CP x2, DS 50%": 27.56, "Transformer-CP x2, DS 75%": 32.36,
    "Transformer-CP x2, DS 100%": 18.64,
}


# Variants compared with another table's row than the first that lists them, and why
# (see the module docstring).
REFERENCE_TABLE = {"gru_cp_ft": 2}
NOTES = {"gru_cp_ft": "Table 2's bilinear GRU-CP row (87.25 / 83.65); Table 1 prints "
                      "Table 2's cosine row (87.08 / 83.15) for GRU-CP fine-tuned"}


def reference(variant: str) -> Optional[tuple[dict[str, float], str]]:
  """(the paper's numbers a variant is compared with, where they come from), or None.

  The source reads e.g. "Table 1", or for `gru_cp_ft` "Table 2 (bilinear) — ..." with
  the reason it is not Table 1's row.
  """
  variant = "ens_transformer_cp_ds50" if variant == "ensemble" else variant
  order = sorted(TABLES, key=lambda t: t != REFERENCE_TABLE.get(variant))
  for t in order:
    if variant in TABLES[t]:
      note = NOTES.get(variant)
      return TABLES[t][variant], f"Table {t}" + (f": {note}" if note else "")
  return None


def row_for_variant(variant: str) -> Optional[dict[str, float]]:
  """The paper's numbers a downstream variant is compared with, if it reports them:
  `reference` without the source (gru_cp_ft: Table 2's bilinear row)."""
  ref = reference(variant)
  return None if ref is None else ref[0]
