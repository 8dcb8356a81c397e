"""Running one unit of a study once, resumably, wherever it runs: claims, attempts,
heartbeats, publishing.

A unit (`plan.Unit`) publishes one folder or several (`Unit.parts`: a pre-training
workdir, or the `<setting>/<row>/r<repeat>f<fold>` folders of a row's folds), each
of which appears whole, holding `unit.json`, or not at all. The work happens beside
them, in the unit's *attempts folder* (`attempts_folder`: `.<name>.attempts/` beside
the unit's folder, `.r<repeat>.attempts/` for a row's repeat):

* `claim.<n>`: attempt n's claim, created with O_EXCL (so of two processes taking
  attempt n, one gets it), holding its owner (host, boot id, pid and the pid's start
  time); its owner touches it every `HEARTBEAT_S` seconds while it works.
* `work.<n>`: attempt n's own workdir, holding a folder for each folder the unit
  publishes (named as it) and whatever the parts share (a row's stacked
  checkpoints). The trainer runs there and nowhere else: no two attempts ever write
  into one folder. A new attempt starts from a copy of the newest earlier attempt's
  workdir, so it resumes from that attempt's checkpoints (the trainer resumes from
  what its workdir holds).
* Publishing: the attempt works on the folders not published yet, writes
  `unit.json` into each last, then renames each onto its published name. A
  directory rename onto an existing non-empty folder fails, so exactly one attempt
  publishes a folder, once; an attempt that finds one published (another finished
  first) leaves it and discards its own. Once every folder is published the
  publisher removes the attempts folder. An attempt killed between two renames
  leaves the rest to the next, which works on those alone.

Who makes the next attempt: a process that finds a folder unpublished looks at the
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
over and both attempts run; both write only their own workdirs and one publishes
each folder, so that costs time, not results. A copy of a live attempt's workdir
may catch a checkpoint mid-write; Orbax writes checkpoints under temporary names
and the trainer skips unreadable ones. NFS attribute caching delays what other
hosts see by up to a minute (`acregmax`), well under `STALE_S`. Two hosts with the
same hostname and boot id (containers of one machine in separate pid namespaces)
would see each other's owners as dead: give containers their own hostnames.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import threading
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging

from coughjax import files

UNIT_FILE = "unit.json"
HEARTBEAT_S = 30.0
STALE_S = 180.0
POLL_S = 2.0

# work(scratch, todo) -> {folder: record}: fills scratch/<folder's name> for each
# folder of `todo` (the unit's folders not published yet) and returns their records.
Work = Callable[[pathlib.Path, list[pathlib.Path]], dict[pathlib.Path, dict]]


def attempts_folder(folder: pathlib.Path) -> pathlib.Path:
  """Where the attempts at the unit named by `folder` live."""
  return folder.parent / f".{folder.name}.attempts"


def read_unit(folder: pathlib.Path) -> Optional[dict]:
  """The `unit.json` of a published folder, or None if `folder` is not published."""
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


def state(side: pathlib.Path, folders: Sequence[pathlib.Path]) -> str:
  """"done" (every folder published), "partial (...)" (an attempt's claim or
  workdir is in `side`, or some folders are published) or "to do"."""
  published = sum(read_unit(f) is not None for f in folders)
  if published == len(folders):
    return "done"
  some = f"{published} of {len(folders)} published" if published else ""
  claims = _generations(side, "claim.")
  if claims:
    owner = _owner(side / f"claim.{claims[-1]}")
    what = (f"attempt {claims[-1]} by {owner.get('host', '?')} pid "
            f"{owner.get('pid', '?')}")
  else:
    works = _generations(side, "work.")
    what = f"attempt {works[-1]} stopped" if works else ""
  if not what and not some:
    return "to do"
  return f"partial ({', '.join(w for w in (what, some) if w)})"


def write_json(path: pathlib.Path, blob: Any) -> None:
  files.atomic_write(path, lambda f: f.write(
      (json.dumps(blob, indent=1, sort_keys=True) + "\n").encode()))


# --- claims ---------------------------------------------------------------------


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


def run_once(side: pathlib.Path, folders: Sequence[pathlib.Path], work: Work, *,
             stale_s: float = STALE_S, poll_s: float = POLL_S) -> list[dict]:
  """Publishes each of `folders` by `work` unless it is published; their unit.json
  records, in order.

  Args:
    side: the unit's attempts folder (`attempts_folder`; see the module docstring).
    folders: what the unit publishes, each whole by a rename.
    work: fills its first argument, a fresh or resumed attempt workdir, with a
      folder (named as the published one) for each folder of its second, those not
      published yet, and returns their records (written as unit.json after it; a
      record without "seconds" gets its share of the attempt's time).
    stale_s: seconds without a heartbeat after which another machine's claim is
      taken over.
    poll_s: how often a waiting process looks again.
  """
  watch, slot = _Watch(stale_s), _Slot()
  try:
    while True:
      done = [read_unit(f) for f in folders]
      if all(d is not None for d in done):
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
      return _attempt(side, folders, n + 1, claim, work)
  finally:
    slot.rejoin()


def _attempt(side: pathlib.Path, folders: Sequence[pathlib.Path], n: int,
             claim: pathlib.Path, work: Work) -> list[dict]:
  """Attempt `n` (its claim held): work on the folders not published, then publish
  each by renaming."""
  # Published between our look and our claim, or by an earlier attempt that died
  # between two renames: not worked on again.
  todo = [f for f in folders if read_unit(f) is None]
  if not todo:
    shutil.rmtree(side, ignore_errors=True)
    return [read_unit(f) for f in folders]
  stop = threading.Event()
  beat = threading.Thread(target=_heartbeat, args=(claim, stop), daemon=True)
  beat.start()
  scratch = side / f"work.{n}"
  try:
    resumed = _adopt(side, n, scratch)
    start = time.monotonic()
    records = work(scratch, todo)
    seconds = (time.monotonic() - start) / len(todo)
    for folder in todo:
      record = records[folder]
      record.setdefault("seconds", seconds)
      record.update(attempt=n, resumed_from=resumed, shared_by=len(todo),
                    ran_on=f"{socket.gethostname()} pid {os.getpid()}")
      write_json(scratch / folder.name / UNIT_FILE, record)
    for folder in todo:
      try:
        os.rename(scratch / folder.name, folder)
      except OSError:
        if read_unit(folder) is None:
          raise
        logging.info("%s: published by another attempt first; attempt %d's discarded",
                     folder, n)
  except Exception:  # pylint: disable=broad-except
    if any(read_unit(f) is None for f in folders):
      claim.unlink(missing_ok=True)  # a rerun resumes from work.<n> at once
      raise
    logging.info("%s: published by another attempt first; attempt %d discarded", side, n)
  finally:
    stop.set()
    beat.join()
  shutil.rmtree(side, ignore_errors=True)
  return [read_unit(f) for f in folders]


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


