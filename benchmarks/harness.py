"""What the benchmark scripts share: interleaved timing, the machine, FLOP counts.

* `time_interleaved` runs every implementation once per repeat, in turn, so that load
  from other processes on a shared machine hits them alike, and reports the median
  and the interquartile range.
* `LoadMonitor` counts the CPU time other processes (and the hypervisor) took before
  and during a run, and says when another job shared the cores (then even
  interleaved ratios cannot be trusted).
* `peak_matmul_flops` measures this machine's fp32 peak the way a model would reach
  it: a large square matmul (jax and torch, best of a few).
* `transformer_flops`, `gru_flops`, `vggish_flops` count the multiply-adds of an
  encoder's forward pass per clip (2 FLOPs each; elementwise work not counted).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import platform
import resource
import sys
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
# Clips per call of the chunked PyTorch twins: coughjax's model.chunk_size on CPU
# ("auto" = coughjax.models.platform.CPU_DEFAULT.train_chunk; not imported, to keep
# jax out of the torch-only subprocesses).
TORCH_CHUNK = 16
# The scripts run as `python benchmarks/<name>.py` from a checkout: make the package
# and configs/ importable without installing them.
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))


def cpu_name() -> str:
  """The CPU model from /proc/cpuinfo (platform.processor() is often empty)."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
  """What a reader needs to compare numbers: CPU, cores, load, library versions."""
  import jax  # pylint: disable=g-import-not-at-top
  out = {"cpu": cpu_name(), "cores": os.cpu_count(),
         "jax": jax.__version__, "jax_device": jax.devices()[0].device_kind,
         "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
         "date": time.strftime("%Y-%m-%d %H:%M %Z")}
  try:
    import torch  # pylint: disable=g-import-not-at-top
    out.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  except ImportError:
    pass
  return out


def describe(m: Mapping[str, Any]) -> str:
  torch_part = (f", torch {m['torch']} ({m['torch_threads']} threads)" if "torch" in m
                else "")
  return (f"{m['date']}; {m['cpu']}, {m['cores']} cores ({m['jax_device']}); "
          f"jax {m['jax']}{torch_part}; load average {m['loadavg_1_5_15']}")


@dataclasses.dataclass
class Timing:
  """Seconds per call over the timed repeats, and the first (untimed) call's."""
  samples: list[float]
  first_s: float = float("nan")  # includes compilation for a jitted fn

  @property
  def median(self) -> float:
    return float(np.median(self.samples))

  @property
  def iqr(self) -> tuple[float, float]:
    return tuple(float(x) for x in np.percentile(self.samples, [25, 75]))


def time_interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int,
                     min_repeat_s: float = 0.2, warmup: int = 2,
                     max_warmup_s: float = 10.0,
                     max_timed_s: Optional[float] = None) -> dict[str, Timing]:
  """Seconds per call of each fn (which must block until its result is ready).

  After up to `warmup` untimed calls each (the first may compile; a fn whose
  warm-up calls have already lasted `max_warmup_s` gets no more: a call that long is
  warm), every repeat times each fn in turn (the order rotating), calling it as
  often as needed to last about `min_repeat_s` so that sub-millisecond calls are not
  lost in the timer's and the scheduler's noise.

  `max_timed_s` caps the timed part: when one round over every fn is estimated (from
  the last warm-up calls) to last longer than max_timed_s / repeats, fewer repeats
  are run, at least one. Slow calls (VGGish at batch 1024 runs ~25 s) then cost one
  repeat each, which already averages over many seconds.
  """
  calls, first = {}, {}
  round_s = 0.0
  for name, fn in fns.items():
    spent, per_call = 0.0, 0.0
    for i in range(max(warmup, 1)):
      start = time.perf_counter()
      fn()
      per_call = time.perf_counter() - start
      spent += per_call
      if i == 0:
        first[name] = per_call
      if spent >= max_warmup_s:
        break
    calls[name] = max(1, math.ceil(min_repeat_s / max(per_call, 1e-9)))
    round_s += calls[name] * per_call
  if max_timed_s is not None:
    repeats = max(1, min(repeats, int(max_timed_s // max(round_s, 1e-9))))
  samples = {name: [] for name in fns}
  names = list(fns)
  for r in range(repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      fn, n = fns[name], calls[name]
      start = time.perf_counter()
      for _ in range(n):
        fn()
      samples[name].append((time.perf_counter() - start) / n)
  return {name: Timing(s, first[name]) for name, s in samples.items()}


def cpu_seconds() -> Optional[dict[str, float]]:
  """CPU time so far, in seconds: `busy` (every process on the machine, from
  /proc/stat: user, nice, system, irq, softirq), `steal` (taken by the hypervisor for
  other guests), `own` (this process's threads and its finished children, from
  getrusage), and `wall` (`time.perf_counter`). None where there is no /proc/stat
  (not Linux)."""
  try:
    with open("/proc/stat") as f:
      fields = [int(v) for v in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  user, nice, system, _, _, irq, softirq, steal = (fields + [0] * 8)[:8]
  tick = os.sysconf("SC_CLK_TCK")
  own = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                               resource.getrusage(resource.RUSAGE_CHILDREN)))
  return {"busy": (user + nice + system + irq + softirq) / tick, "steal": steal / tick,
          "own": own, "wall": time.perf_counter()}


def cpu_since(start: Optional[dict[str, float]]) -> Optional[dict[str, float]]:
  """{others_cores, steal_cores}: the cores that other processes and the hypervisor
  kept busy since `start` (a `cpu_seconds()` snapshot), CPU seconds per second; None
  without /proc/stat."""
  end = cpu_seconds()
  seconds = end["wall"] - start["wall"] if start and end else 0.0
  if seconds <= 0:
    return None
  return {"others_cores": round(max(end["busy"] - start["busy"]
                                    - (end["own"] - start["own"]), 0.0) / seconds, 3),
          "steal_cores": round((end["steal"] - start["steal"]) / seconds, 3)}


class LoadMonitor:
  """Says whether anything else used the CPU before and while a benchmark ran.

  Other jobs slow whatever runs beside them unevenly (a memory-bound kernel more than
  a compute-bound one, a long call more than a short one), so even interleaved
  ratios move. The monitor counts the CPU time that was not the benchmark's: the
  machine's busy time (/proc/stat) minus this process's own (getrusage), in cores
  (CPU seconds per second), over a `settle_s` window before the run (the benchmark
  idle) and over the run itself, and the hypervisor's steal time (a neighbour on a
  shared host). `shared` is True when others kept more than `OTHERS` of a core busy,
  or steal took more than `OTHERS`, before or during the run. Unlike the load
  average, which decays over minutes, this does not count the benchmark's own
  previous run (`cpu_since` gives the same count over any part of a run, such as one
  row's timings). The 1-minute load average is still sampled every `interval_s`
  seconds, before and after. Without /proc/stat the
  verdict falls back to the load average: above `threads` + 0.5 during the run, or
  above 1.0 before it.

  Usage: `with LoadMonitor(threads) as load: ...`, then `load.summary()`.
  """

  OTHERS = 0.15  # cores; a quiet machine measured 0.01-0.03 (benchmarks/README.md)
  MARGIN = 0.5  # load-average fallback: a lone benchmark reached ~threads + 0.4
  IDLE = 1.0

  def __init__(self, threads: int, interval_s: float = 5.0, settle_s: float = 1.0):
    self.threads = threads
    self.interval_s = interval_s
    self.settle_s = settle_s
    self.before = self.after = None
    self.samples: list[float] = []
    self.cpu: dict[str, Optional[dict[str, float]]] = {}
    self._stop = threading.Event()
    self._thread = None

  def now(self) -> float:
    """The current 1-minute load average (also kept as a sample)."""
    load = os.getloadavg()[0]
    self.samples.append(load)
    return load

  def _sample(self) -> None:
    while not self._stop.wait(self.interval_s):
      self.now()

  def _window(self, key: str, start: Optional[dict[str, float]]) -> None:
    self.cpu[key] = cpu_since(start)

  def __enter__(self) -> "LoadMonitor":
    self.before = self.now()
    start = cpu_seconds()
    time.sleep(self.settle_s)
    self._window("before", start)
    self._start = cpu_seconds()
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join()
    self._window("during", self._start)
    self.after = self.now()

  def _cpu_verdict(self) -> Optional[tuple[bool, str]]:
    before, during = self.cpu.get("before"), self.cpu.get("during")
    if before is None or during is None:
      return None
    worst = max(v for w in (before, during) for v in w.values())
    return worst > self.OTHERS, (
        f"other processes kept {before['others_cores']:.2f} cores busy in the "
        f"{self.settle_s:g} s before the run and {during['others_cores']:.2f} during it, "
        f"hypervisor steal {before['steal_cores']:.2f} / {during['steal_cores']:.2f} cores "
        f"(/proc/stat less this process's CPU time; over {self.OTHERS:.2f} is another job)")

  def summary(self) -> dict[str, Any]:
    """{before, max, after, threads, cpu, shared, note}: what a report prints with its
    ratios (`cpu`: others' and steal cores before and during, None without /proc/stat)."""
    peak = max(self.samples)
    load_note = (f"1-minute load average {self.before:.2f} before, up to {peak:.2f} "
                 f"during, {self.after:.2f} after the run; the benchmark keeps "
                 f"{self.threads} threads busy")
    verdict = self._cpu_verdict()
    if verdict is None:
      shared = peak > self.threads + self.MARGIN or self.before > self.IDLE
      note = load_note + (f", so a load above {self.threads + self.MARGIN:.1f} during it "
                          f"or above {self.IDLE:.1f} before it is someone else's")
    else:
      shared, cpu_note = verdict
      note = f"{cpu_note}; {load_note}"
    if shared:
      note = (f"WARNING: another job shared the cores ({note}): the times and ratios of "
              "this run cannot be trusted; rerun on a quiet machine")
    return {"before": round(self.before, 2), "max": round(peak, 2),
            "after": round(self.after, 2), "threads": self.threads,
            "cpu": dict(self.cpu), "shared": shared, "note": note}


def peak_matmul_flops(size: int = 4096, repeats: int = 3) -> dict[str, float]:
  """FLOP/s of a [size, size] fp32 matmul in jax and in torch (best of `repeats`)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  flops = 2.0 * size**3
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, a).block_until_ready()
  best = {"jax": min(_seconds(lambda: matmul(a, a).block_until_ready())
                     for _ in range(repeats))}
  try:
    import torch  # pylint: disable=g-import-not-at-top
    t = torch.from_numpy(np.array(a))  # a writable copy
    torch.mm(t, t)
    best["torch"] = min(_seconds(lambda: torch.mm(t, t)) for _ in range(repeats))
  except ImportError:
    pass
  return {k: flops / v for k, v in best.items()}


def _seconds(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def peak_rss_bytes() -> int:
  """This process's peak resident set size (ru_maxrss is in KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------ FLOP counts


def transformer_flops(time_steps: int, mel: int, d_model: int, num_layers: int,
                      num_heads: int, mlp_dim: int) -> float:
  """Forward FLOPs per clip of coughjax's Transformer (matmuls only).

  Per layer: q|k|v projection 2*T*d*3d, logits and weights @ v 2 * 2*T*T*d (all
  heads together), output projection 2*T*d*d, MLP 2 * 2*T*d*mlp; plus the embedding
  2*T*mel*d. The defaults (T 96, d 64, 2 layers, MLP 256) give 24.38 MFLOP.
  """
  del num_heads  # heads split d; the count does not depend on them
  t, d = time_steps, d_model
  per_layer = 2 * t * d * 3 * d + 2 * (2 * t * t * d) + 2 * t * d * d + 2 * (2 * t * d * mlp_dim)
  return float(2 * t * mel * d + num_layers * per_layer)


def gru_flops(time_steps: int, mel: int, d_model: int, num_layers: int) -> float:
  """Forward FLOPs per clip of a GRU: per step and layer, 2*3d*(in + d)."""
  return float(sum(time_steps * 2 * 3 * d_model * ((mel if i == 0 else d_model) + d_model)
                   for i in range(num_layers)))


def vggish_flops(conv_layers: Sequence[tuple[str, int, bool]],
                 fc_widths: Sequence[int], height: int, width: int) -> float:
  """Forward FLOPs per clip of VGGish: 3x3 SAME convs with 2x2 pools, then FCs."""
  total, channels = 0.0, 1
  for _, out, pool in conv_layers:
    total += 2 * height * width * 9 * channels * out
    channels = out
    if pool:
      height, width = height // 2, width // 2
  fan_in = height * width * channels
  for units in fc_widths:
    total += 2 * fan_in * units
    fan_in = units
  return total


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: str = "") -> str:
  """A markdown table; `align` gives one of l/r per column (default: l then r)."""
  align = align or "l" + "r" * (len(header) - 1)
  rule = ["---:" if a == "r" else "---" for a in align]
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)
