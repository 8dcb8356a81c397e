"""Running one unit of a study: once, resumably, wherever it runs.

A unit (`plan.Unit`) is published as its folder `F` (a pre-training workdir, or a
row's `<setting>/<row>/r<repeat>f<fold>`), which appears whole, holding `unit.json`,
or not at all. The work happens beside it, in `F`'s *attempts folder*
`.<F's name>.attempts/`:

* `claim.<n>`: attempt n's claim, created with O_EXCL (so of two processes taking
  attempt n, one gets it), holding its owner (host, boot id, pid and the pid's start
  time); its owner touches it every `HEARTBEAT_S` seconds while it works.
* `work.<n>`: attempt n's own workdir. The trainer runs there and nowhere else: no
  two attempts ever write into one folder. A new attempt starts from a copy of the
  newest earlier attempt's workdir, so it resumes from that attempt's checkpoints
  (the trainer resumes from what its workdir holds).
* Publishing: the attempt writes `unit.json` into its workdir last, then renames the
  workdir to `F`. A directory rename onto an existing non-empty folder fails, so
  exactly one attempt publishes `F`, once; an attempt that finds `F` published
  (another one finished first) leaves it and discards its own work. The publisher
  then removes the attempts folder.

Who makes the next attempt: a process that finds no published `F` looks at the
newest claim. Its owner is alive if it runs on this machine (same hostname and boot
id) with that pid and start time, or, on another machine, while the claim's mtime
changes (heartbeats): unchanged for `STALE_S` seconds of this process's clock (so
clocks need not agree across hosts) it is stale. While the owner is alive the
process waits for it (a Dask task secedes from its worker's thread pool meanwhile,
so the worker runs other units); once the owner is gone, the process creates the
next claim and resumes the work. So when Dask retries the unit of a dead worker,
the retry resumes at once on the same machine and after `STALE_S` on another; and
two commands, or two Dask clusters, sharing a workdir take different units and
wait for each other's. No lock is held anywhere (flock is host-local on NFS
mounted `nolock` and fails on FUSE mounts).

Failure modes. Correctness rests on O_EXCL create and directory rename (atomic on a
local disk, NFSv3+, Lustre, GPFS; object-store mounts such as gcsfuse lack atomic
renames and should hold one command's workdir only). A claim's owner that stops
heartbeating for `STALE_S` without dying (a suspended VM, an NFS outage) is taken
over and both attempts run; both write only their own workdirs and one publishes,
so that costs time, not results. A copy of a live attempt's workdir may catch a
checkpoint mid-write; Orbax writes checkpoints under temporary names and the
trainer skips unreadable ones. NFS attribute caching delays what other hosts see
by up to a minute (`acregmax`), well under `STALE_S`. Two hosts with the same
hostname and boot id (containers of one machine in separate pid namespaces) would
see each other's owners as dead: give containers their own hostnames.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import shutil
import socket
import threading
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import numpy as np

from coughjax import baselines
from coughjax import data
from coughjax import files
from coughjax.data import features as features_lib
from coughjax.data import manifest as manifest_lib
from coughjax.data import splits as splits_lib
from coughjax.protocol import folds as folds_lib
from coughjax.protocol import plan as plan_lib

UNIT_FILE = "unit.json"
CONFIG_FILE = "unit_config.json"
PREDICTIONS_FILE = "predictions.csv"
# A unit's scores of its validation part (columns as predictions.csv), where the
# row writes them: thresholds are chosen on these, never on the test part.
VAL_PREDICTIONS_FILE = "val_predictions.csv"
# A deep row's test part scored again with every input's level shifted by these
# gains (dB), in `gain_file(db)`: how far a model's AUC moves with loudness alone.
GAINS_DB = (-10.0, 10.0)
# The largest difference allowed between the trainer's test scores and the serving
# path's (`coughjax.predict`) from the unit's checkpoint: more means another
# checkpoint or another input pipeline scored the validation and perturbed parts.
SERVING_TOLERANCE = 1e-4
HEARTBEAT_S = 30.0
STALE_S = 180.0
POLL_S = 2.0


def perturbation(db: float) -> str:
  """How scores and reports name a gain: "gain-10", "gain+10", ..."""
  return f"gain{db:+g}"


def gain_file(db: float) -> str:
  """predictions_gain-10.csv, predictions_gain+10.csv, ..."""
  return f"predictions_{perturbation(db)}.csv"


def attempts_folder(folder: pathlib.Path) -> pathlib.Path:
  return folder.parent / f".{folder.name}.attempts"


# --- what is on disk ----------------------------------------------------------------


def read_unit(folder: pathlib.Path) -> Optional[dict]:
  """The `unit.json` of a published unit, or None if `folder` is not published."""
  path = folder / UNIT_FILE
  if not path.is_file():
    if folder.is_dir():
      raise ValueError(f"{folder}: a unit folder without {UNIT_FILE} (left by a coughjax "
                       "from before units were published whole): delete it to run the "
                       "unit again")
    return None
  try:
    return files.read_json(path, "unit record", required=("seconds",))
  except ValueError as e:
    raise ValueError(f"{e}; delete {folder} to run the unit again") from None


def state(folder: pathlib.Path) -> str:
  """"done", "partial (...)" (an attempt's workdir or claim is there) or "to do"."""
  if read_unit(folder) is not None:
    return "done"
  side = attempts_folder(folder)
  claims = _generations(side, "claim.")
  if claims:
    owner = _owner(side / f"claim.{claims[-1]}")
    return (f"partial (attempt {claims[-1]} by {owner.get('host', '?')} pid "
            f"{owner.get('pid', '?')})")
  works = _generations(side, "work.")
  return f"partial (attempt {works[-1]} stopped)" if works else "to do"


def check_same(folder: pathlib.Path, config) -> None:
  """A folder holding a unit (or an attempt) of another config is an error, not a
  silent reuse."""
  path = folder / CONFIG_FILE
  if not path.is_file():
    return
  want = json.loads(config.to_json_best_effort())
  try:
    saved = files.read_json(path, "unit config")
  except ValueError as e:
    raise ValueError(f"{e}; delete {folder} to run the unit again") from None
  if saved != want:
    diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
    raise ValueError(f"{folder} holds a unit made with another config (sections "
                     f"{diff} differ): delete it or use a new workdir")


def read_predictions(folder: pathlib.Path, name: str = PREDICTIONS_FILE
                     ) -> dict[str, tuple[int, float]]:
  """{recording key: (label, score)} of one unit (its test part, or the file `name`)."""
  with open(folder / name, newline="") as f:
    return {folds_lib.recording_key(r["path"]): (int(r["label"]), float(r["probability"]))
            for r in csv.DictReader(f)}


def _write_predictions(path: pathlib.Path, paths: Sequence[str], labels, scores) -> None:
  text = io.StringIO()
  writer = csv.writer(text)
  writer.writerow(["path", "label", "probability"])
  for p, y, s in zip(paths, labels, scores):
    writer.writerow([p, int(y), repr(float(s))])
  files.atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def _write_json(path: pathlib.Path, blob: Any) -> None:
  files.atomic_write(path, lambda f: f.write(
      (json.dumps(blob, indent=1, sort_keys=True) + "\n").encode()))


# --- claims -------------------------------------------------------------------------


def _generations(side: pathlib.Path, prefix: str) -> list[int]:
  try:
    names = os.listdir(side)
  except FileNotFoundError:
    return []
  return sorted(int(n[len(prefix):]) for n in names
                if n.startswith(prefix) and n[len(prefix):].isdigit())


def _boot_id() -> str:
  try:
    return pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
  except OSError:
    return ""


def _started(pid: int) -> Optional[str]:
  """The start time of process `pid` (clock ticks since boot), None if no such
  process; "" where /proc cannot tell (then any live pid counts)."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[19]
  except FileNotFoundError:
    return None
  except (OSError, IndexError):
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return None
    except PermissionError:
      pass
    return ""


def _me() -> dict:
  return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(),
          "started": _started(os.getpid()) or "", "time": time.time()}


def _owner(claim: pathlib.Path) -> dict:
  try:
    return json.loads(claim.read_text() or "{}")
  except (OSError, ValueError):  # gone, or being written
    return {}


class _Watch:
  """Whether the owners of the claims one process sees are alive (see the module
  docstring): on this machine by their pid, elsewhere by their heartbeats."""

  def __init__(self, stale_s: float):
    self.stale_s = stale_s
    self.seen: dict[tuple[str, int], float] = {}

  def alive(self, claim: pathlib.Path) -> bool:
    try:
      mtime = claim.stat().st_mtime_ns
    except FileNotFoundError:
      return False
    owner = _owner(claim)
    me = _me()
    if owner and (owner.get("host"), owner.get("boot")) == (me["host"], me["boot"]):
      started = _started(int(owner["pid"]))
      return started is not None and started in ("", owner.get("started", ""))
    first = self.seen.setdefault((claim.name, mtime), time.monotonic())
    return time.monotonic() - first < self.stale_s


def _heartbeat(claim: pathlib.Path, stop: threading.Event) -> None:
  while not stop.wait(HEARTBEAT_S):
    try:
      os.utime(claim)
    except FileNotFoundError:  # the unit was published and its attempts removed
      return


class _Slot:
  """Leaves the Dask worker's thread pool while a unit waits for another process's
  attempt (the worker runs other units meanwhile), and rejoins it before working.
  Outside a Dask worker it does nothing."""

  def __init__(self):
    self.out = False

  def leave(self) -> None:
    if not self.out and _in_worker():
      import distributed  # pylint: disable=g-import-not-at-top
      distributed.secede()
      self.out = True

  def rejoin(self) -> None:
    if self.out:
      import distributed  # pylint: disable=g-import-not-at-top
      distributed.rejoin()
      self.out = False


def _in_worker() -> bool:
  try:
    import distributed  # pylint: disable=g-import-not-at-top
    distributed.get_worker()
    return True
  except (ImportError, ValueError):
    return False


def run_once(folder: pathlib.Path, work: Callable[[pathlib.Path], dict], *,
             stale_s: float = STALE_S, poll_s: float = POLL_S) -> dict:
  """Publishes `folder` by `work(scratch)` unless it is published; its unit.json.

  Args:
    folder: the unit's folder (published whole by a rename, see the module
      docstring).
    work: fills its argument, a fresh or resumed attempt workdir, with the unit's
      outputs and returns the unit record (written as unit.json after it).
    stale_s: seconds without a heartbeat after which another machine's claim is
      taken over.
    poll_s: how often a waiting process looks again.
  """
  side = attempts_folder(folder)
  watch, slot = _Watch(stale_s), _Slot()
  try:
    while True:
      done = read_unit(folder)
      if done is not None:
        return done
      side.mkdir(parents=True, exist_ok=True)
      n = max(_generations(side, "claim.") + _generations(side, "work.") + [-1])
      if n >= 0 and watch.alive(side / f"claim.{n}"):
        slot.leave()
        time.sleep(poll_s)
        continue
      slot.rejoin()
      claim = side / f"claim.{n + 1}"
      try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except (FileExistsError, FileNotFoundError):  # taken, or the unit published
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(_me(), f)
      return _attempt(folder, side, n + 1, claim, work)
  finally:
    slot.rejoin()


def _attempt(folder: pathlib.Path, side: pathlib.Path, n: int, claim: pathlib.Path,
             work: Callable[[pathlib.Path], dict]) -> dict:
  """Attempt `n` (its claim held): work, then publish by renaming."""
  done = read_unit(folder)  # published between our look and our claim
  if done is not None:
    shutil.rmtree(side, ignore_errors=True)
    return done
  stop = threading.Event()
  beat = threading.Thread(target=_heartbeat, args=(claim, stop), daemon=True)
  beat.start()
  scratch = side / f"work.{n}"
  try:
    resumed = _adopt(side, n, scratch)
    start = time.monotonic()
    unit = work(scratch)
    unit.setdefault("seconds", time.monotonic() - start)
    unit.update(attempt=n, resumed_from=resumed,
                ran_on=f"{socket.gethostname()} pid {os.getpid()}")
    _write_json(scratch / UNIT_FILE, unit)
    os.rename(scratch, folder)
  except Exception:  # pylint: disable=broad-except
    done = read_unit(folder)
    if done is None:
      claim.unlink(missing_ok=True)  # a rerun resumes from work.<n> at once
      raise
    logging.info("%s: published by another attempt first; attempt %d discarded", folder,
                 n)
    return done
  finally:
    stop.set()
    beat.join()
  shutil.rmtree(side, ignore_errors=True)
  return unit


def _adopt(side: pathlib.Path, n: int, scratch: pathlib.Path) -> Optional[int]:
  """Makes attempt n's workdir: a copy of the newest earlier attempt's that copies
  whole (its generation returned), else an empty folder (None)."""
  for g in reversed([g for g in _generations(side, "work.") if g < n]):
    tmp = side / f".copy.{n}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
      shutil.copytree(side / f"work.{g}", tmp, symlinks=True)
      os.rename(tmp, scratch)
      logging.info("%s: attempt %d resumes from attempt %d's workdir", side, n, g)
      return g
    except (OSError, shutil.Error) as e:  # changed while copied: try an older one
      logging.warning("%s: could not copy attempt %d's workdir (%s)", side, g, e)
  shutil.rmtree(side / f".copy.{n}", ignore_errors=True)
  scratch.mkdir()
  return None


# --- the work of a unit -------------------------------------------------------------


def default_runner(config, workdir: str) -> Optional[dict]:
  """Trains `config` in `workdir`; a downstream unit's model then scores its
  validation part and its test part at other gains (`score_again`), whose record
  is returned (the unit record gets it)."""
  from coughjax.train import downstream  # pylint: disable=g-import-not-at-top
  from coughjax.train import run as run_lib  # pylint: disable=g-import-not-at-top
  run_lib.run(config, workdir)
  if config.task != "downstream":
    return None
  rows = downstream.read_predictions(
      pathlib.Path(workdir) / "run_0" / downstream.PREDICTIONS_FILE)
  return score_again(config, pathlib.Path(workdir),
                     {r["path"]: float(r["probability"]) for r in rows})


def _epochs_used(run_dir: pathlib.Path) -> dict[str, int]:
  """Epochs trained and the best validation epoch, from a run's metrics.jsonl."""
  val = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()
         if l.strip() and json.loads(l)["split"] == "val"]
  best = [v["epoch"] for v in val if v.get("best")]
  return {"epochs": len(val), "best_epoch": (best[-1] + 1) if best else 0}


def _work(unit: plan_lib.Unit, runner: Callable, scratch: pathlib.Path) -> dict:
  """Trains, pre-trains or fits `unit` in `scratch`; the unit record."""
  config = unit.config()
  check_same(scratch, config)
  _write_json(scratch / CONFIG_FILE, json.loads(config.to_json_best_effort()))
  if unit.is_pretraining:
    logging.info("pre-training %s in %s", unit.variant, scratch)
    config.lock()
    runner(config, str(scratch))
    return {}
  if unit.row.is_baseline:
    parts = baselines.load_split_features(config)
    scored, info = baselines.BASELINES[unit.row.variant](parts, config.seed)
    for part, name in (("test", PREDICTIONS_FILE), ("val", VAL_PREDICTIONS_FILE)):
      _write_predictions(scratch / name, [r.path for r in parts[part].records],
                         parts[part].labels, scored[part])
    return {"info": info}
  logging.info("%s in %s", unit.name, scratch)
  config.lock()
  scored_again = runner(config, str(scratch))
  run_dir = scratch / "run_0"
  from coughjax.train import downstream  # pylint: disable=g-import-not-at-top
  rows = downstream.read_predictions(run_dir / downstream.PREDICTIONS_FILE)
  _write_predictions(scratch / PREDICTIONS_FILE, [r["path"] for r in rows],
                     [r["label"] for r in rows], [r["probability"] for r in rows])
  return {**_epochs_used(run_dir), **(scored_again or {})}


def gain_offset(db: float) -> float:
  """A gain of `db` dB in the log-mel domain (natural log of filterbank energies):
  a constant added to every frame and band, as `coughjax.train.augment` applies its
  random gain."""
  return db * math.log(10.0) / 10.0


def score_again(config, workdir: pathlib.Path, trained: dict[str, float],
                gains_db: Sequence[float] = GAINS_DB) -> dict:
  """Scores a trained downstream unit's validation part (`VAL_PREDICTIONS_FILE`)
  and its test part with every input shifted by each of `gains_db`
  (`gain_file(db)`), from the checkpoint that scored its test part, through the
  serving path (`coughjax.predict`); writes them into `workdir`.

  The parts are the trainer's (`config.data`: the same manifest, labelled filter and
  fold). A gain is applied to the raw log-mel features, before the front end's
  `features.normalise` (which removes it again where it is "gain" or "cmn"), and a
  recording keeps the DS masks of its unshifted features, so a score moves by what
  the level does alone.

  Args:
    config: the unit's downstream config.
    workdir: the unit's trained workdir (run_0 and its best checkpoint).
    trained: {path: score} the trainer wrote for the test part.

  Returns:
    {"serving_max_diff": the largest difference between `trained` and the serving
    path's scores of the unshifted test part}.

  Raises:
    RuntimeError: that difference is above `SERVING_TOLERANCE`.
  """
  from coughjax import predict  # pylint: disable=g-import-not-at-top
  records = manifest_lib.select(data.get_manifest(config.data), labelled=True)
  parts = splits_lib.from_config(records, config.data, require_all=True)
  params = features_lib.FeatureParams.from_config(config.features)
  raw = features_lib.FeatureCache(dataclasses.replace(params, normalise=""))
  classifier = predict.load_classifier(workdir)

  def load(part):  # (paths, labels, raw features) of a part's usable recordings
    kept, feats, _ = raw.load(parts[part], name=f"{config.data.name}/{part}",
                              workers=config.data.workers, progress=False)
    return [r.path for r in kept], [r.label for r in kept], feats

  def scores(paths, feats, db):
    shifted = [features_lib.normalise(f + np.float32(gain_offset(db)), params.normalise)
               for f in feats]
    unshifted = [features_lib.normalise(f, params.normalise) for f in feats]
    return classifier.predict_features(shifted, paths, unshifted)

  paths, labels, feats = load("val")
  _write_predictions(workdir / VAL_PREDICTIONS_FILE, paths, labels,
                     scores(paths, feats, 0.0))
  paths, labels, feats = load("test")
  again = dict(zip(paths, scores(paths, feats, 0.0)))
  if set(again) != set(trained):
    raise RuntimeError(f"{workdir}: the serving path scored other test recordings "
                       f"({len(again)}) than the trainer ({len(trained)})")
  out = {"serving_max_diff": max(abs(again[k] - v) for k, v in trained.items())}
  if out["serving_max_diff"] > SERVING_TOLERANCE:
    raise RuntimeError(f"{workdir}: the serving path's test scores differ from the "
                       f"trainer's by up to {out['serving_max_diff']:.3g}: its "
                       "validation and perturbed scores would not be the same model's")
  for db in gains_db:
    _write_predictions(workdir / gain_file(db), paths, labels, scores(paths, feats, db))
  return out


def run(unit: plan_lib.Unit, runner: Callable = default_runner) -> dict:
  """Runs, resumes or finds done one unit (`run_once`); its unit record. `runner`
  (config, workdir) trains (writing run_0/test_predictions.csv for a downstream
  config) and may return a dict for the unit record; a module-level function, so
  that it pickles."""
  return run_once(unit.folder, lambda scratch: _work(unit, runner, scratch))
