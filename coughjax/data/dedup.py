"""Near-duplicate recordings: copies of one recording become one participant.

A release may hold one recording several times under different file names: byte-
identical, or re-encoded, resampled, re-gained or trimmed (covid19_cough's Telegram
files: see `coughjax.data.covid19_cough`). Kept as different participants, the copies
can land in training and test. `apply` finds the groups of copies among a source's
recordings from their decoded audio and gives every group one participant id (that of
its first recording in manifest order). Where participants are merged and their labels
disagree, their recordings become unlabelled (label None; pre-training uses them,
downstream tasks drop them); an unlabelled recording counts as disagreeing, since
covid19_cough leaves byte-identical files with conflicting labels unlabelled.
`get_manifest` applies it when `config.data.dedup` is on, to the recordings the
source returns (after its filters: a copy that `source_filter` or `verified_only`
leaves out does not count).

Method (`Params`; the measurements behind the numbers are `benchmarks/dedup.py`'s):

* Fingerprint: the recording's log-mel features from the feature cache (`FEATURES`,
  the default feature parameters, whatever the run's own are), bands wholly below
  4 kHz (the telephone band: a copy resampled to 8 kHz keeps them), floored 20 nats
  below the recording's peak (digital silence decodes to arbitrarily low values),
  then *double-centred*: each band's mean over time and each frame's mean over bands
  removed. A gain is a constant in log-mel and goes with the centring; so do the
  channel's spectral tilt (band means) and the loudness envelope (frame means), which
  make unrelated coughs of one channel look alike. What is left is the fine time-
  frequency pattern, which a re-encoding keeps and another cough does not.
* Score of two recordings: the correlation of their fingerprints over their overlap,
  at the best lag within +-`max_shift` (0.5 s), for lengths that differ by at most
  2 x `max_shift` and lags whose overlap covers at least half the longer recording
  (a copy trimmed by up to `max_shift` at either end qualifies).
* Search: every pair of comparable length is scored on a coarse fingerprint (4
  frames x 2 bands pooled) by FFT cross-correlation, all lags of a block of pairs at
  once; pairs scoring >= `shortlist` are scored exactly. Copies: score >=
  `threshold`; groups are the connected components (byte-identical files have one
  fingerprint and always group).
* Cached per set of recordings: `$COUGHJAX_CACHE/dedup/<key>.json`, keyed by the
  files' content digests and the parameters, so a second run reads one small file.

Recordings without features (too short, undecodable: the feature cache's skips) are
not compared, and are counted in the log line. Recordings of different sources of a
multi-source config are not compared with each other.

`threshold` sits in the gap between the scores of unrelated recordings and those of
copies (re-encoded, resampled, re-gained or trimmed); `python benchmarks/dedup.py`
measures that gap on covid19_cough, and benchmarks/README.md gives its latest figures.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
from typing import Sequence

from absl import logging
import ducc0
import numpy as np
import threadpoolctl

from coughjax import audio
from coughjax import files
from coughjax.data import features
from coughjax.data.manifest import Recording

VERSION = 1  # bump when the method changes meaning (part of the cache key)
FEATURES = features.FeatureParams()
# Elements of the largest [FFT length, rows, cols] block of cross-correlations
# computed at once (64 MB in float32).
_BLOCK_ELEMENTS = 1 << 24


@dataclasses.dataclass(frozen=True)
class Params:
  """How copies are recognised (see the module docstring)."""
  max_shift: float = 0.5   # seconds: lags searched; trimming tolerated at either end
  threshold: float = 0.63  # best-lag correlation at or above which two are copies
  shortlist: float = 0.45  # coarse score at or above which a pair is scored exactly
  max_hz: float = 4000.0   # fingerprint bands: those wholly below this frequency
  floor: float = 20.0      # log-mel floored this many nats below the recording's peak
  coarse_frames: int = 4   # the coarse pass pools this many frames ...
  coarse_bands: int = 2    # ... and this many bands

  def key(self, digests: Sequence[str]) -> str:
    blob = json.dumps([VERSION, dataclasses.asdict(self), FEATURES.key(),
                       sorted(set(digests))])
    return hashlib.sha256(blob.encode()).hexdigest()

  @property
  def max_lag(self) -> int:
    """`max_shift` in feature frames."""
    return round(self.max_shift / FEATURES.winstep)

  @property
  def num_bands(self) -> int:
    """Mel bands of FEATURES whose upper edge is at or below `max_hz`."""
    top = audio.hz_to_mel(FEATURES.sample_rate / 2)
    upper = audio.mel_to_hz(np.linspace(0.0, top, FEATURES.nfilt + 2)[2:])
    return int(np.sum(upper <= self.max_hz + 1e-6))


# --------------------------------------------------------------------- fingerprints


def fingerprint(logmel: np.ndarray, params: Params = Params()
                ) -> tuple[np.ndarray, np.ndarray]:
  """[T, nfilt] log-mel features -> (fine [T, bands], coarse [T / c, bands / b])
  float64 fingerprints, each double-centred (see the module docstring)."""
  bands = params.num_bands - params.num_bands % params.coarse_bands
  x = np.asarray(logmel[:, :bands], np.float64)
  x = np.maximum(x, x.max() - params.floor)
  t = len(x) - len(x) % params.coarse_frames
  coarse = x[:t].reshape(t // params.coarse_frames, params.coarse_frames,
                         bands // params.coarse_bands, params.coarse_bands).mean((1, 3))
  return _double_centre(x), _double_centre(coarse)


def _double_centre(x: np.ndarray) -> np.ndarray:
  x = x - x.mean(axis=0, keepdims=True)
  return x - x.mean(axis=1, keepdims=True)


# -------------------------------------------------------------------------- scores


def best_lag(a: Sequence[np.ndarray], b: Sequence[np.ndarray], max_lag: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """Best-lag correlations of every a[r] with every b[c] ([T, D] arrays, one D).

  The score of a lag L is the Pearson correlation of a[t] with b[t - L] over the
  frames both have; the best over |L| <= max_lag whose overlap is at least half the
  longer array. Pairs whose lengths differ by more than 2 max_lag, or with no such
  lag, score -inf. The cross-correlations of all lags come from one FFT product per
  pair, summed over D as a matrix product per frequency; the overlap sums from
  cumulative sums.

  Returns:
    ([R, C] float64 scores, [R, C] int best lags).
  """
  ta = np.array([len(x) for x in a])
  tb = np.array([len(x) for x in b])
  size = ducc0.fft.good_size(int(max(ta.max(), tb.max())) + max_lag, True)
  lags = np.arange(-max_lag, max_lag + 1)

  def spectra(arrays, conj):  # -> [K, D, n] complex64
    buf = np.zeros((size, arrays[0].shape[1], len(arrays)), np.float32)
    for i, x in enumerate(arrays):
      buf[:len(x), :, i] = x
    out = ducc0.fft.r2c(buf, axes=(0,))
    return np.conj(out) if conj else out

  # [K, R, D] @ [K, D, C] -> [K, R, C]; inverse FFT over K -> [size, R, C].
  product = np.matmul(np.ascontiguousarray(spectra(a, False).transpose(0, 2, 1)),
                      spectra(b, True))
  xcorr = ducc0.fft.c2r(product, axes=(0,), lastsize=size, forward=False, inorm=2)
  xcorr = xcorr[lags % size].astype(np.float64)  # [lags, R, C]

  lag = lags[:, None, None]
  la, lb = ta[None, :, None], tb[None, None, :]
  lo = np.maximum(0, lag)
  hi = np.maximum(np.minimum(la, lb + lag), lo)  # a's overlap [lo, hi); b's - lag
  count = (hi - lo) * a[0].shape[1]
  sa, saa = _window_sums(a, lo, hi, rows=True)
  sb, sbb = _window_sums(b, lo - lag, hi - lag, rows=False)
  with np.errstate(invalid="ignore", divide="ignore"):
    cov = xcorr - sa * sb / count
    va, vb = saa - sa * sa / count, sbb - sb * sb / count
    score = cov / np.sqrt(va * vb)
  valid = ((2 * (hi - lo) >= np.maximum(la, lb)) & (np.abs(la - lb) <= 2 * max_lag)
           & (va > 1e-9 * count) & (vb > 1e-9 * count) & np.isfinite(score))
  score = np.where(valid, score, -np.inf)
  best = score.argmax(axis=0)
  return np.take_along_axis(score, best[None], 0)[0], lags[best]


def _window_sums(arrays, lo, hi, rows: bool):
  """Sums of x and x**2 over frames [lo, hi) of each array, broadcast like lo/hi
  ([lags, R, C]; the arrays index R if `rows`, else C)."""
  longest = max(len(x) for x in arrays)
  first = np.zeros((len(arrays), longest + 1))
  second = np.zeros((len(arrays), longest + 1))
  for i, x in enumerate(arrays):
    first[i, 1:len(x) + 1] = np.cumsum(x.sum(axis=1))
    second[i, 1:len(x) + 1] = np.cumsum((x * x).sum(axis=1))
    first[i, len(x) + 1:] = first[i, len(x)]
    second[i, len(x) + 1:] = second[i, len(x)]
  idx = (np.arange(len(arrays))[None, :, None] if rows
         else np.arange(len(arrays))[None, None, :])
  lo, hi = np.clip(lo, 0, longest), np.clip(hi, 0, longest)
  return first[idx, hi] - first[idx, lo], second[idx, hi] - second[idx, lo]


def all_pairs(prints: Sequence[np.ndarray], max_lag: int, min_score: float
              ) -> list[tuple[int, int, float, int]]:
  """(i, j, score, lag of j against i) with i < j for every pair of `prints` whose
  `best_lag` score is >= min_score: blocks of up to 64 recordings, sorted by length,
  against the recordings before them no shorter than theirs by over 2 max_lag."""
  length = np.array([len(x) for x in prints])
  order = np.argsort(length, kind="stable")
  found, start = [], 0
  while start < len(order):
    count = min(64, len(order) - start)
    while True:  # halve the block until its cross-correlations fit _BLOCK_ELEMENTS
      rows = order[start:start + count]
      first = int(np.searchsorted(length[order], length[rows[0]] - 2 * max_lag))
      if count == 1 or count * (start + count - first) * (
          length[rows[-1]] + max_lag) <= _BLOCK_ELEMENTS:
        break
      count //= 2
    cols = order[first:start + count]
    score, lag = best_lag([prints[i] for i in rows], [prints[j] for j in cols], max_lag)
    for r, c in zip(*np.nonzero(np.isfinite(score) & (score >= min_score))):
      if first + c < start + r:  # each pair once: the column comes first in `order`
        i, j = int(rows[r]), int(cols[c])
        found.append((min(i, j), max(i, j), float(score[r, c]),
                      int(lag[r, c]) if i < j else -int(lag[r, c])))
    start += count
  return found


def search(prints: Sequence[tuple[np.ndarray, np.ndarray]], params: Params = Params()
           ) -> list[tuple[int, int, float, int]]:
  """(i, j, score, lag in frames) of the pairs of `fingerprint`s that are copies:
  coarse scores shortlist, exact scores decide."""
  coarse_lag = math.ceil(params.max_lag / params.coarse_frames) + 1
  candidates = collections.defaultdict(list)
  copies = []
  # The matrix products are many small ones, for which BLAS threads cost more than
  # they bring (synchronisation per product outweighs the work it splits).
  with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
    for i, j, _, _ in all_pairs([c for _, c in prints], coarse_lag, params.shortlist):
      candidates[i].append(j)
    for i, js in sorted(candidates.items()):
      score, lag = best_lag([prints[i][0]], [prints[j][0] for j in js], params.max_lag)
      copies += [(i, j, float(s), int(l)) for j, s, l in zip(js, score[0], lag[0])
                 if s >= params.threshold]
  return copies


# ------------------------------------------------------------------------- groups


@dataclasses.dataclass
class Found:
  """What `find` returns: groups of record indices (each in manifest order, >= 2
  records), the copy pairs' scores, and how many records had no features."""
  groups: list[list[int]]
  scores: list[float]
  not_compared: int


def find(records: Sequence[Recording], params: Params = Params(), *, name: str = "data",
         workers: int = 0) -> Found:
  """Groups of copies among `records` (cached; see the module docstring)."""
  cache = features.FeatureCache(FEATURES)
  digests = [cache.content_key(r) for r in records]
  first = {}  # distinct contents -> index of its first recording
  for i, d in enumerate(digests):
    first.setdefault(d, i)
  key = params.key(digests)
  path = cache.root / features.DEDUP / key[:2] / f"{key}.json"
  try:
    saved = json.loads(path.read_text())
    logging.info("%s: near-duplicate groups read from %s", name, path)
  except (OSError, ValueError):
    saved = _compute({d: records[i] for d, i in first.items()}, cache, params, name,
                     workers)
    cache.hold(features.DEDUP)  # `coughjax.cache prune` keeps it while this writes
    with features.writing(cache.root):
      files.atomic_write(path, lambda f: f.write(json.dumps(saved).encode()))
  edges = [(first[d], i) for i, d in enumerate(digests)]  # byte-identical files
  edges += [(first[a], first[b]) for a, b, _ in saved["pairs"]]
  members = collections.defaultdict(list)
  for i, top in _components(range(len(records)), edges).items():
    members[top].append(i)
  skipped = set(saved["skipped"])
  return Found(groups=[v for v in members.values() if len(v) > 1],
               scores=[s for _, _, s in saved["pairs"]],
               not_compared=sum(d in skipped for d in digests))


def _components(items, edges) -> dict:
  """{item: the first item of its connected component, in `items` order}."""
  rank = {x: k for k, x in enumerate(items)}
  parent = {x: x for x in rank}

  def top(x):
    while parent[x] != x:
      parent[x] = parent[parent[x]]
      x = parent[x]
    return x

  for a, b in edges:
    a, b = top(a), top(b)
    if a != b:
      parent[max(a, b, key=rank.get)] = min(a, b, key=rank.get)
  return {x: top(x) for x in rank}


def _compute(distinct: dict[str, Recording], cache, params, name, workers) -> dict:
  """{"pairs": [[digest, digest, score]], "skipped": [digest]}: the copies among
  the recordings of distinct contents ({digest: recording}), and the contents
  without features."""
  keys = list(distinct)
  kept, paths, _ = cache.resolve(list(distinct.values()),
                                 name=f"{name} (near-duplicates)", workers=workers,
                                 progress=False)
  pairs = search([fingerprint(np.load(p), params) for p in paths], params)
  logging.info("%s: compared %d distinct recordings for near-duplicates: %d pairs of "
               "copies", name, len(kept), len(pairs))
  return {"pairs": [[keys[kept[i]], keys[kept[j]], round(s, 6)] for i, j, s, _ in pairs],
          "skipped": sorted(set(keys) - {keys[k] for k in kept})}


def apply(records: Sequence[Recording], params: Params = Params(), *, name: str = "data",
          workers: int = 0) -> list[Recording]:
  """`records` with every group of copies in one participant, whose id is that of
  its first recording; where a merged participant's labels differ (None counts),
  all its recordings are unlabelled. Logs what it merged."""
  found = find(records, params, name=name, workers=workers)
  pids = list(dict.fromkeys(r.participant_id for r in records))
  top = _components(pids, [(records[g[0]].participant_id, records[i].participant_id)
                           for g in found.groups for i in g[1:]])
  merged = collections.defaultdict(list)
  for i, r in enumerate(records):
    merged[top[r.participant_id]].append(i)
  out, conflicting, unlabelled = list(records), 0, 0
  for pid, indices in merged.items():
    if all(records[i].participant_id == pid for i in indices):
      continue
    labels = {records[i].label for i in indices}
    if len(labels) > 1:
      conflicting += 1
      unlabelled += sum(records[i].label is not None for i in indices)
    for i in indices:
      out[i] = dataclasses.replace(records[i], participant_id=pid,
                                   label=records[i].label if len(labels) == 1 else None)
  _log(name, found, len(pids), len(merged), conflicting, unlabelled, params)
  return out


def _log(name, found, before, after, conflicting, unlabelled, params) -> None:
  skipped = (f"; {found.not_compared} recordings without features were not compared"
             if found.not_compared else "")
  if not found.groups:
    logging.info("%s: no near-duplicate recordings%s", name, skipped)
    return
  scores = (f", best-lag correlation {min(found.scores):.3f}-{max(found.scores):.3f}"
            if found.scores else "")
  logging.warning(
      "%s: %d groups of near-duplicate recordings (%d recordings: byte-identical or "
      "re-encoded copies%s; threshold %.2f) share one participant each: %d -> %d "
      "participants; %d merged participants had conflicting labels (%d labelled "
      "recordings left unlabelled)%s", name, len(found.groups),
      sum(len(g) for g in found.groups), scores, params.threshold, before, after,
      conflicting, unlabelled, skipped)
