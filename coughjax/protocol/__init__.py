"""The evaluation protocol: folds, statistics, ...

- `folds`: repeated stratified k-fold over groups (participants), and each fold's
  train / validation / test parts.
- `stats`: ROC-AUC with DeLong variances and intervals, paired comparisons,
  combination over repeats, a paired bootstrap, Holm correction and verdicts.
- `thresholds`: metrics at a threshold, operating points, thresholds chosen on
  validation scores, calibration.

Pure numpy/scipy: nothing here imports JAX.
"""
