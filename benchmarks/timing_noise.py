r"""How far apart one program's timings land when it is timed under several labels.

  python benchmarks/timing_noise.py [--labels=5] [--rounds=2] [--batch_sizes=1,1024]
                                    [--settings=15x0.2,60x0.05] [--json=PATH]
  python benchmarks/timing_noise.py --quick     # seconds: 3 labels, batch 2, 1 round

The DS flatness table of `latency.py` is the max/min over five programs' medians, timed
in turn by `harness.time_interleaved`. This script times ONE program (the Transformer
encoder of Table 6, d = 64, on random clips) under `--labels` labels the same way, so
any max/min it shows is timing noise: what the flatness table reads on this machine
when the masking rate costs nothing. Each setting "RxS" is R repeats of at least S
seconds each; every setting is measured `--rounds` times, alternating, so a quiet or
busy minute does not favour one of them. Use it to choose `latency.py`'s
`--repeats`, `--flatness_repeats` and `--min_repeat_s` on a new machine.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import harness  # pylint: disable=g-import-not-at-top
from coughjax.models import transformer


def _setting(text: str) -> tuple[int, float]:
  repeats, _, seconds = text.partition("x")
  try:
    value = int(repeats), float(seconds)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"a setting is REPEATSxSECONDS (e.g. 60x0.05), got {text!r}") from None
  if value[0] < 1 or value[1] <= 0:
    raise argparse.ArgumentTypeError(f"{text!r}: need >= 1 repeat and > 0 seconds")
  return value


def _batch_sizes(text: str) -> list[int]:
  try:
    sizes = [int(b) for b in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(f"batch sizes are integers, e.g. 1,1024; got "
                                     f"{text!r}") from None
  if min(sizes) < 1:
    raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
  return sizes


def spread(batch: int, labels: int, repeats: int, min_repeat_s: float) -> float:
  """max/min of the median seconds per call of one program timed under `labels`
  labels, interleaved."""
  model = transformer.Transformer()
  x = jnp.asarray(np.random.default_rng(batch).standard_normal((batch, 96, 64),
                                                                np.float32))
  params = model.init(jax.random.PRNGKey(0), x, train=False)
  forward = jax.jit(lambda p, x: model.apply(p, x, train=False))

  def call():
    forward(params, x).block_until_ready()

  timings = harness.time_interleaved({f"label {i}": call for i in range(labels)},
                                     repeats=repeats, min_repeat_s=min_repeat_s)
  medians = [t.median for t in timings.values()]
  return max(medians) / min(medians)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--labels", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--batch_sizes", type=_batch_sizes, default=[1, 1024])
  parser.add_argument("--settings", type=lambda s: [_setting(v) for v in s.split(",")],
                      default=[(15, 0.2), (60, 0.05)])
  parser.add_argument("--json", default=None)
  parser.add_argument("--quick", action="store_true", help="smoke run")
  args = parser.parse_args()
  if args.quick:
    args.labels, args.rounds, args.batch_sizes = 3, 1, [2]
    args.settings = [(2, 0.01), (3, 0.01)]
  if args.labels < 2 or args.rounds < 1:
    parser.error("need --labels >= 2 and --rounds >= 1")
  with harness.LoadMonitor(os.cpu_count()) as load:
    found = {(b, s): [] for b in args.batch_sizes for s in args.settings}
    for _ in range(args.rounds):
      for (batch, (repeats, seconds)), out in found.items():
        out.append(spread(batch, args.labels, repeats, seconds))
  summary = load.summary()
  print(f"\nOne Transformer program timed under {args.labels} labels; max/min of the "
        f"labels' medians, {args.rounds} round(s) per setting, on "
        f"{harness.describe(harness.machine())}.\n")
  print(harness.markdown_table(
      ["batch", "repeats x seconds", *(f"round {i + 1}" for i in range(args.rounds))],
      [[b, f"{r} x {s:g}", *(f"{v:.3f}" for v in found[(b, (r, s))])]
       for (b, (r, s)) in found]))
  print(f"\n{summary['note']}.")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"labels": args.labels, "load": summary,
                 "spread": [{"batch": b, "repeats": r, "min_repeat_s": s,
                             "max_over_min_by_round": v}
                            for (b, (r, s)), v in found.items()]}, f, indent=2)


if __name__ == "__main__":
  main()
