"""covid19_cough (CC0 1.0): induced coughs from a call centre and a Telegram bot.

The release of GitHub `covid19-cough/dataset` (December 2020, CC0 1.0 Universal):
recordings of coughs made on request (induced, not spontaneous), labelled COVID-19
positive or negative. Point `root` at a copy of the release layout:

    <root>/metadata.json        list of records, one per recording
    <root>/raw/<uuid>.mp3       the recordings

Each record has `filename`, `covid19` (bool, the label), `source` (`call-center` or
`telegram`), and `verified` (true: positive confirmed by a PCR laboratory result;
false or absent: self-reported, and for negatives never checked), `asymptomatic`
(positives: true = no symptoms reported; read by `asymptomatic`, for the symptoms
control of the covid19_cough study), plus free-text fields that coughjax does not
use.

* Participants: the release has no participant ids, so **each recording is its own
  participant** (id = the file name without `.mp3`), except near-duplicates: this
  module returns one participant per recording, and `coughjax.data.get_manifest`
  then (with `config.data.dedup`, on for this source by default) gives copies of
  one recording that were re-encoded or trimmed one participant, the id of the first
  in metadata order (`coughjax.data.dedup`; in the December 2020 release 14 pairs of
  Telegram files). Splits cannot keep one person's repeated recordings together, and
  a contrastive positive pair is two crops of the same recording (or of its copy).
* Sound: every recording is a cough, named `cough`. Coughs here are not split into
  Coswara's `cough-heavy` / `cough-shallow`, so any cough in `config.data.sounds`
  ("cough", "cough-heavy", "cough-shallow", or an empty selection) takes them; the
  default pre-training and downstream selections do. A selection without a cough
  (breathing only) is an error.
* Label (`config.data.label`): only `covid19` (1 = positive); "" means the same.
* Audio: call-centre files are MP3 at 8 kHz, 2 channels (telephone band, < 4 kHz);
  Telegram files are MP3 at 48 kHz, mono. Both go through `coughjax.audio.load`
  (averaged to mono, resampled to 16 kHz); files shorter than the minimum duration
  are skipped and counted by the feature cache, as for every source.
* **Source confound.** The channel and the label balance both depend on `source`
  (call-centre mostly positive, Telegram mostly negative), so a model can score well
  by recognising the telephone band. Splits are therefore stratified by label within
  source (`Recording.stratum` = source), `source_filter` restricts a run to one
  source, and results should be reported per source.
* `verified_only` keeps only PCR-verified positives (all of them call-centre) and all
  negatives; negatives were never verified.
* **Identical files.** Some records name different files with byte-identical audio
  (in the December 2020 release: 80 groups, 165 Telegram files, nearly all one
  copy labelled negative and one labelled positive-asymptomatic). Kept apart, the
  same audio could land in training and test, and would be its own contrastive
  negative. So identical files are one recording: the first in metadata order is
  kept (its source, verified flag and id), the others are dropped, and if the
  copies' labels disagree the recording is unlabelled (label None: pre-training
  uses it, downstream tasks drop it). A warning gives the counts. Copies that are
  not byte-identical are kept, and grouped as above.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
from typing import Optional, Sequence

from absl import logging

from coughjax.data import manifest as manifest_lib
from coughjax.protocol import folds as folds_lib
from coughjax.data.manifest import Recording

LABELS = ("covid19",)
SOURCES = ("call-center", "telegram")
SOUND = "cough"
METADATA = "metadata.json"
AUDIO_DIR = "raw"


def takes_sounds(sounds: Optional[Sequence[str]]) -> bool:
  """Whether a `config.data.sounds` selection includes this release's coughs: empty
  (all sounds), "cough", or any "cough-*" name such as Coswara's cough-heavy."""
  return not sounds or any(s == SOUND or s.startswith(SOUND + "-") for s in sounds)


def _read_metadata(root: pathlib.Path) -> list[dict]:
  path = root / METADATA
  if not path.is_file():
    raise FileNotFoundError(f"{path}: covid19_cough metadata not found (expected the "
                            f"release layout {METADATA} + {AUDIO_DIR}/<uuid>.mp3)")
  try:
    records = json.loads(path.read_text(encoding="utf-8"))
  except ValueError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(records, list):
    raise ValueError(f"{path}: expected a list of records, got {type(records).__name__}")
  for i, rec in enumerate(records):
    if not isinstance(rec, dict):
      raise ValueError(f"{path}: record {i} is not an object: {rec!r}")
    missing = {"filename", "covid19", "source"} - set(rec)
    if missing:
      raise ValueError(f"{path}: record {i} ({rec.get('filename', '?')}) lacks "
                       f"{sorted(missing)}")
    for key in ("filename", "source"):
      if not isinstance(rec[key], str):
        raise ValueError(f"{path}: record {i}: {key} must be a string, got {rec[key]!r}")
    if not isinstance(rec["covid19"], bool):
      raise ValueError(f"{path}: record {i} ({rec['filename']}): covid19 must be true or "
                       f"false, got {rec['covid19']!r}")
  return records


def manifest(root: str | pathlib.Path, *, label: str = "covid19", source_filter: str = "",
             verified_only: bool = False,
             sounds: Optional[Sequence[str]] = None) -> list[Recording]:
  """The recordings of the release under `root`, one participant each.

  Args:
    root: folder holding `metadata.json` and `raw/`.
    label: "covid19" (or "" for the same).
    source_filter: "" (both sources), "call-center" or "telegram".
    verified_only: keep only PCR-verified positives (negatives all stay).
    sounds: a `config.data.sounds` selection; it must include a cough (see
      `takes_sounds`).

  Returns:
    Recordings in metadata order, sound "cough", label 1 = COVID-19 positive,
    stratum = the record's source.

  Raises:
    FileNotFoundError: `root`, `metadata.json` or a file a record names is missing.
    ValueError: unknown label, source filter or sound selection; malformed metadata;
      nothing left after filtering.
  """
  if label not in ("",) + LABELS:
    raise ValueError(f"covid19_cough has only the label 'covid19' (positive = COVID-19); "
                     f"got data.label={label!r}")
  if source_filter not in ("",) + SOURCES:
    raise ValueError(f"unknown covid19_cough source_filter {source_filter!r}; choose "
                     f"'' (both) or one of {SOURCES}")
  if not takes_sounds(sounds):
    raise ValueError(f"covid19_cough holds only coughs (sound {SOUND!r}), and data.sounds="
                     f"{list(sounds)} selects no cough; add 'cough' or leave it empty")
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"{root}: covid19_cough root folder not found")
  metadata = _read_metadata(root)
  # A file name leading out of the root ("..", absolute) or to a device is skipped,
  # counted and never opened.
  paths = manifest_lib.confine(
      root, [os.path.join(AUDIO_DIR, rec["filename"]) for rec in metadata],
      source=root / METADATA)
  metadata = [rec for rec, path in zip(metadata, paths) if path is not None]
  paths = [path for path in paths if path is not None]
  for rec, path in zip(metadata, paths):
    if not path.is_file():
      raise FileNotFoundError(f"{path}: named by {root / METADATA} (record "
                              f"{rec['filename']!r}) but missing")
  # Over the whole release, before any filter, so that every copy's label counts.
  copies = _identical_files(paths)
  labels = {i: {metadata[j]["covid19"] for j in group} for i, group in copies.items()}
  _log_identical(root, copies, labels)

  records, dropped = [], collections.Counter()
  first_of = {j: i for i, group in copies.items() for j in group}
  for i, (rec, path) in enumerate(zip(metadata, paths)):
    if first_of.get(i, i) != i:
      dropped["identical copy"] += 1
      continue
    if source_filter and rec["source"] != source_filter:
      dropped["other source"] += 1
      continue
    label = rec["covid19"] if len(labels.get(i, (0,))) == 1 else None
    if verified_only and label and rec.get("verified") is not True:
      dropped["unverified positive"] += 1
      continue
    records.append(Recording(str(path), path.stem, SOUND,
                             None if label is None else int(label), stratum=rec["source"]))
  if not records:
    raise ValueError(f"{root}: no covid19_cough recordings left (source_filter="
                     f"{source_filter!r}, verified_only={verified_only}; dropped "
                     f"{dict(dropped)})")
  ids = collections.Counter(r.participant_id for r in records)
  repeated = [pid for pid, n in ids.items() if n > 1]
  if repeated:
    raise ValueError(f"{root / METADATA}: {len(repeated)} file(s) listed more than once, "
                     f"e.g. {repeated[0]!r}; each recording must be one participant")
  by = collections.Counter((r.stratum, r.label) for r in records)
  logging.info("covid19_cough at %s: %d recordings (%s)%s", root, len(records),
               "; ".join(f"{s} positive {by[s, 1]}, negative {by[s, 0]}"
                         + (f", unlabelled {by[s, None]}" if by[s, None] else "")
                         for s in sorted({s for s, _ in by})),
               "".join(f"; left out {n} {why}" for why, n in sorted(dropped.items())))
  return records


def asymptomatic(root: str | pathlib.Path) -> dict[str, bool]:
  """{recording key (`coughjax.protocol.folds.recording_key` of its path): the release's
  `asymptomatic` flag} for every record that has one (in the December 2020 release,
  positives only: true = no symptoms reported). Copies of one recording share the
  flag of the first in metadata order, the one the manifest keeps.

  Raises:
    ValueError: a flag that is not true, false or null.
  """
  root = pathlib.Path(root)
  out = {}
  for i, rec in enumerate(_read_metadata(root)):
    flag = rec.get("asymptomatic")
    if flag is None:
      continue
    if not isinstance(flag, bool):
      raise ValueError(f"{root / METADATA}: record {i} ({rec['filename']}): asymptomatic "
                       f"must be true, false or null, got {flag!r}")
    out.setdefault(folds_lib.recording_key(str(root / AUDIO_DIR / rec["filename"])),
                   flag)
  return out


def _identical_files(paths: Sequence[pathlib.Path]) -> dict[int, list[int]]:
  """{first index: [all indices]} for each group of byte-identical files (only
  files sharing a size are read)."""
  by_size = collections.defaultdict(list)
  for i, path in enumerate(paths):
    by_size[path.stat().st_size].append(i)
  groups = collections.defaultdict(list)
  for same_size in (v for v in by_size.values() if len(v) > 1):
    for i in same_size:
      groups[hashlib.sha256(paths[i].read_bytes()).hexdigest()].append(i)
  return {v[0]: v for v in groups.values() if len(v) > 1}


def _log_identical(root, copies: dict[int, list[int]], labels: dict[int, set]) -> None:
  if not copies:
    return
  conflicting = sum(len(v) > 1 for v in labels.values())
  logging.warning("%s: %d groups of byte-identical files (%d files) are kept as one "
                  "recording each; %d of them are labelled both positive and negative "
                  "and left unlabelled", root / METADATA, len(copies),
                  sum(len(v) for v in copies.values()), conflicting)


def from_config(cfg) -> list[Recording]:
  """`config.data` fields: root, label, source_filter, verified_only, sounds."""
  if not cfg.root:
    raise ValueError("data.name='covid19_cough' needs --config.data.root=<folder with "
                     f"{METADATA} and {AUDIO_DIR}/>")
  return manifest(cfg.root, label=cfg.get("label", ""),
                  source_filter=cfg.get("source_filter", ""),
                  verified_only=bool(cfg.get("verified_only", False)),
                  sounds=tuple(cfg.get("sounds", ())))
