"""Near-duplicate search on a covid19_cough release: the score's margin, and its cost.

    python benchmarks/dedup.py [--data=../shared/data/covid19_cough] [--copies=140]
                               [--quick] [--json=PATH]

Takes the release's recordings (byte-identical files already merged, as the source
does), adds re-encoded copies of some of them (resampled, re-gained, trimmed, written
as MP3, Vorbis, FLAC or WAV under new names), then

* scores every comparable pair exactly (`dedup.all_pairs` with no shortlist: the
  reference) and runs the library's two-stage search (`dedup.search`), timed back to
  back, and checks that both find the same copies;
* prints the exact scores' distribution per kind of pair: unrelated pairs within
  the call centre, within Telegram and across; the copies made here against their
  originals; the copies the search finds in the release itself, with the waveform
  correlation of each (an independent check that they are copies: the best
  normalised cross-correlation of the two 8 kHz signals), beside the same for the
  highest-scoring unrelated pairs;
* the margin: the lowest copy score minus the highest unrelated one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import soundfile as sf
import soxr
import threadpoolctl

import harness
from coughjax import audio
from coughjax.data import covid19_cough
from coughjax.data import dedup
from coughjax.data import features
from coughjax.data.manifest import Recording

_DATA = flags.DEFINE_string("data", None, "covid19_cough release (default: "
                            "$COUGHJAX_COVID19_COUGH or ../shared/data/covid19_cough)")
_COPIES = flags.DEFINE_integer("copies", 140, "re-encoded copies to add")
_QUICK = flags.DEFINE_bool("quick", False, "every 16th recording, 7 copies (smoke test)")
_JSON = flags.DEFINE_string("json", None, "also write the results here")

# (name, new rate or None, gain, seconds trimmed at the start, at the end, format,
# subtype): one copy each in turn.
VARIANTS = [
    ("resampled to 16 kHz, WAV", 16000, 1.0, 0.0, 0.0, "WAV", "PCM_16"),
    ("gain 0.5, MP3", None, 0.5, 0.0, 0.0, "MP3", "MPEG_LAYER_III"),
    ("trimmed 0.3 + 0.2 s, Vorbis", None, 1.0, 0.3, 0.2, "OGG", "VORBIS"),
    ("44.1 kHz, gain 0.7, trimmed 0.5 s, MP3", 44100, 0.7, 0.5, 0.0, "MP3",
     "MPEG_LAYER_III"),
    ("gain 1.3, end trimmed 0.5 s, FLAC", None, 1.3, 0.0, 0.5, "FLAC", "PCM_16"),
    ("22.05 kHz, gain 0.5, trimmed 0.25 + 0.25 s, MP3", 22050, 0.5, 0.25, 0.25, "MP3",
     "MPEG_LAYER_III"),
    ("resampled to 8 kHz, trimmed 0.1 s, WAV", 8000, 1.0, 0.1, 0.0, "WAV", "PCM_16"),
]
SHORT_NAMES = {"call-center": "call centre", "telegram": "Telegram"}


def _find_data() -> pathlib.Path:
  for c in (_DATA.value, os.environ.get("COUGHJAX_COVID19_COUGH"),
            harness.REPO.parent / "shared" / "data" / "covid19_cough"):
    if c and (pathlib.Path(c) / "metadata.json").is_file():
      return pathlib.Path(c)
  sys.exit("covid19_cough not found: pass --data or set COUGHJAX_COVID19_COUGH")


def _make_copies(records, count, out: pathlib.Path) -> list[tuple[Recording, int, str]]:
  """(copy, index of its original, variant) for `count` recordings of over 1.6 s,
  evenly spaced over the release, each re-encoded by the next of VARIANTS."""
  long = [i for i, r in enumerate(records) if sf.info(r.path).duration > 1.6]
  made = []
  for i in (long[k] for k in np.linspace(0, len(long) - 1, min(count, len(long)),
                                         dtype=int)):
    x, rate = sf.read(records[i].path, always_2d=True)
    name, new_rate, gain, start, end, fmt, subtype = VARIANTS[len(made) % len(VARIANTS)]
    x = x[int(start * rate):len(x) - int(end * rate)] * gain
    if new_rate:
      x, rate = soxr.resample(x, rate, new_rate), new_rate
    path = out / f"copy-{len(made):03d}.mp3"
    sf.write(path, np.clip(x, -1, 1), rate, format=fmt, subtype=subtype)
    made.append((Recording(str(path), path.stem, "cough", stratum=records[i].stratum),
                 i, name))
  return made


def _waveform_corr(a: str, b: str) -> float:
  """Best normalised cross-correlation of two recordings at 8 kHz."""
  x, y = audio.load(a, 8000), audio.load(b, 8000)
  n = len(x) + len(y)
  c = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(y, n)), n)
  return float(c.max() / np.sqrt(np.dot(x, x) * np.dot(y, y)))


def _stats(scores) -> dict:
  v = np.asarray(scores)
  return {"pairs": int(v.size), "min": float(v.min()), "median": float(np.median(v)),
          "p99_9": float(np.percentile(v, 99.9)), "max": float(v.max())}


def main(argv):
  del argv
  params = dedup.Params()
  records = covid19_cough.manifest(_find_data())[::16 if _QUICK.value else 1]
  with tempfile.TemporaryDirectory() as tmp:
    made = _make_copies(records, len(VARIANTS) if _QUICK.value else _COPIES.value,
                        pathlib.Path(tmp))
    everything = records + [c for c, _, _ in made]
    kept, paths, _ = features.FeatureCache(dedup.FEATURES).resolve(
        everything, name="dedup benchmark", progress=False,
        workers=1 if _QUICK.value else 0)  # quick: no worker processes to start
    prints = [dedup.fingerprint(np.load(p), params) for p in paths]
    recs = [everything[i] for i in kept]
    where = {k: n for n, k in enumerate(kept)}

    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
      start = time.perf_counter()
      exact = dedup.all_pairs([f for f, _ in prints], params.max_lag, -np.inf)
      exhaustive_s = time.perf_counter() - start
    start = time.perf_counter()
    found = dedup.search(prints, params)
    search_s = time.perf_counter() - start
    reference = {(i, j) for i, j, s, _ in exact if s >= params.threshold}
    same = reference == {(i, j) for i, j, _, _ in found}

    # Groups: the copies the exhaustive scoring finds, and each made copy with its
    # original; pairs across groups are unrelated.
    original = {where[len(records) + k]: (where.get(i), name)
                for k, (_, i, name) in enumerate(made) if len(records) + k in where}
    group = dedup._components(range(len(recs)), list(reference) + [  # pylint: disable=protected-access
        (i, j) for i, (j, _) in original.items() if j is not None])
    made_scores, real_copies, unrelated = {}, [], {}
    for i, j, s, _ in exact:
      if group[i] != group[j]:
        kind = " / ".join(sorted({SHORT_NAMES[recs[i].stratum],
                                  SHORT_NAMES[recs[j].stratum]}))
        unrelated.setdefault(kind, []).append((s, recs[i].path, recs[j].path))
      elif original.get(j, (None,))[0] == i:
        made_scores.setdefault(original[j][1], []).append(s)
      elif (i, j) in reference and i not in original and j not in original:
        real_copies.append((s, recs[i].path, recs[j].path))
    top_unrelated = sorted((x for v in unrelated.values() for x in v), reverse=True)[:5]
    real_waves = [_waveform_corr(a, b) for _, a, b in real_copies]
    top_waves = [_waveform_corr(a, b) for _, a, b in top_unrelated]

  rows, results = [], {}
  for kind, v in sorted(unrelated.items()):
    results[f"unrelated {kind}"] = st = _stats([s for s, _, _ in v])
    rows.append([f"unrelated, {kind}", st["pairs"], f"{st['median']:.3f}",
                 f"{st['p99_9']:.3f}", f"{st['min']:.3f}-{st['max']:.3f}", ""])
  rows.append(["unrelated, top 5", 5, "", "", f"{top_unrelated[-1][0]:.3f}-"
               f"{top_unrelated[0][0]:.3f}", f"{min(top_waves):.3f}-{max(top_waves):.3f}"])
  for name, v in sorted(made_scores.items()):
    results[f"made copy: {name}"] = st = _stats(v)
    rows.append([f"copy made here: {name}", st["pairs"], f"{st['median']:.3f}", "",
                 f"{st['min']:.3f}-{st['max']:.3f}", ""])
  if real_copies:
    results["copies found in the release"] = st = dict(
        _stats([s for s, _, _ in real_copies]), waveform_corr=real_waves)
    rows.append(["copies found in the release", st["pairs"], f"{st['median']:.3f}", "",
                 f"{st['min']:.3f}-{st['max']:.3f}",
                 f"{min(real_waves):.3f}-{max(real_waves):.3f}"])
  lowest_copy = min([s for v in made_scores.values() for s in v]
                    + [s for s, _, _ in real_copies])
  m = harness.machine()
  print(f"\n{len(records)} recordings of the release + {len(made)} copies made here "
        f"({len(recs)} with features), {len(exact):,} comparable pairs; threshold "
        f"{params.threshold}, shortlist {params.shortlist}; {harness.describe(m)}\n")
  print(harness.markdown_table(
      ["pairs (exact best-lag correlation)", "n", "median", "99.9 %", "range",
       "waveform corr"], rows))
  print(f"\nmargin: lowest copy {lowest_copy:.3f} - highest unrelated "
        f"{top_unrelated[0][0]:.3f} = {lowest_copy - top_unrelated[0][0]:.3f}")
  print(f"time: exhaustive exact scoring {exhaustive_s:.1f} s, two-stage search "
        f"{search_s:.1f} s ({exhaustive_s / search_s:.1f}x); same copies found: {same}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"machine": m, "params": dataclasses.asdict(params), "results": results, "lowest_copy": lowest_copy,
                 "highest_unrelated": top_unrelated[0][0], "exhaustive_s": exhaustive_s,
                 "search_s": search_s, "same_copies": same}, f, indent=2)
  if not same:
    sys.exit("the two-stage search and the exhaustive scoring found different copies")


if __name__ == "__main__":
  app.run(main)
