"""Built-in synthetic respiratory recordings: the default data, no download needed.

A deterministic (seeded) generator of ~1,500 participants x 4 sounds, like Coswara's
breathing-deep/shallow and cough-heavy/shallow. Each participant has a voice of their
own, so two clips of one participant are recognisably theirs (contrastive pairs are
learnable):

* vocal-tract resonances (3 formants with their own bandwidths) shaping all sounds;
* a fundamental frequency and harmonic roll-off for the voiced tail of coughs;
* a spectral tilt and a nasal notch of the breath noise;
* loudness, breathing rate and cough burst length.

Each recording draws fresh noise, burst timings and a few per-cent jitter of the
participant's parameters.

Binary label (`label=1`, about one participant in three, like the paper's 141/439):
a subtle, documented change. A recording of a positive participant shows a symptom
with probability 0.8, and one of a negative participant with probability 0.1
(label noise, so the task is not trivial: a perfect symptom detector scores a
recording-level ROC-AUC of 0.85). The symptom is

* in coughs: a "wet" rattle, low-pitched (< 300 Hz) noise riding on the voiced cough
  tail at its amplitude, gated at 6-12 Hz, and a 15 % longer decay (a linear
  probe on per-band mean/std/delta log-mel statistics detects it at ROC-AUC > 0.9);
* in breathing: a faint wheeze, a tone at 400-900 Hz gliding by +-5 %, 22 dB below
  the breath noise, present during exhalation.

Recordings are addressed as `synthetic://<seed>/<participant>/<sound>` and rendered
on demand; they go through the same feature and clip path as real audio.
"""

from __future__ import annotations

import zlib

import ducc0
import numpy as np

from coughjax.data.manifest import PRETRAIN_SOUNDS, SYNTHETIC_SCHEME, Recording

SCHEME = SYNTHETIC_SCHEME
GENERATOR_VERSION = 3  # bump when rendering changes, to invalidate cached features
POSITIVE_FRACTION = 0.32
SYMPTOM_PROB = {1: 0.8, 0: 0.1}
RATTLE_GAIN = 1.0  # rattle noise amplitude relative to the voiced tail
# Duration ranges in seconds per sound.
_DURATIONS = {
    "breathing-deep": (3.0, 4.5),
    "breathing-shallow": (2.5, 3.5),
    "cough-heavy": (1.5, 2.5),
    "cough-shallow": (1.2, 2.2),
}


def manifest(num_participants: int = 1500, seed: int = 0,
             sounds=PRETRAIN_SOUNDS) -> list[Recording]:
  """The synthetic recordings, labelled, in participant order."""
  for s in sounds:
    if s not in _DURATIONS:
      raise ValueError(f"synthetic data has no sound {s!r}; it has {sorted(_DURATIONS)}")
  records = []
  for p in range(num_participants):
    label = _participant(seed, p)["label"]
    records += [Recording(f"{SCHEME}{seed}/{p}/{s}", f"synth-{seed}-{p:05d}", s, label)
                for s in sounds]
  return records


def _rng(*keys: int) -> np.random.Generator:
  return np.random.default_rng([GENERATOR_VERSION, *keys])


def _participant(seed: int, index: int) -> dict:
  rng = _rng(seed, index)
  return dict(
      label=int(rng.random() < POSITIVE_FRACTION),
      formants=np.array([rng.uniform(350, 900), rng.uniform(900, 2300),
                         rng.uniform(2300, 3600)]),
      bandwidths=rng.uniform(60, 250, size=3),
      formant_gains=rng.uniform(0.4, 1.0, size=3),
      f0=float(np.exp(rng.uniform(np.log(90), np.log(260)))),
      harmonic_decay=rng.uniform(0.5, 0.9),
      tilt_db_per_octave=rng.uniform(-9.0, -3.0),
      notch_hz=rng.uniform(700, 3000),
      loudness=float(np.exp(rng.uniform(np.log(0.05), np.log(0.4)))),
      breath_rate=rng.uniform(0.35, 0.8),
      burst_s=rng.uniform(0.18, 0.4),
  )


def _envelope(freqs: np.ndarray, p: dict) -> np.ndarray:
  """The participant's vocal-tract magnitude response at `freqs` (Hz)."""
  env = np.full_like(freqs, 0.05)
  for f, bw, g in zip(p["formants"], p["bandwidths"], p["formant_gains"]):
    env += g / (1.0 + ((freqs - f) / (bw / 2)) ** 2)
  octaves = np.log2(np.maximum(freqs, 50.0) / 500.0)
  env *= 10.0 ** (p["tilt_db_per_octave"] * octaves / 20.0)
  env *= 1.0 - 0.7 * np.exp(-((freqs - p["notch_hz"]) / 80.0) ** 2)
  return env


def _filtered_noise(rng, n: int, shape) -> np.ndarray:
  """[n] unit-variance white noise filtered in the frequency domain: `shape` scales
  (in place) the rfft bins of a power-of-two draw (arbitrary n can be very slow)."""
  size = 1 << (n - 1).bit_length()
  spec = ducc0.fft.r2c(rng.standard_normal(size, np.float32))
  shape(spec)
  noise = ducc0.fft.c2r(spec, axes=(0,), lastsize=size)[:n]
  return noise / (np.std(noise) + 1e-12)


def _shaped_noise(rng, n: int, rate: int, p: dict) -> np.ndarray:
  """White noise through the participant's envelope."""

  def shape(spec):
    # The envelope is smooth: evaluate it on a coarse grid and interpolate.
    coarse = np.linspace(0.0, rate / 2, 513)
    spec *= np.interp(np.linspace(0.0, rate / 2, spec.size, dtype=np.float32), coarse,
                      _envelope(coarse, p)).astype(np.float32)

  return _filtered_noise(rng, n, shape)


def render(path: str, sample_rate: int = 16000) -> np.ndarray:
  """The waveform of `synthetic://<seed>/<participant>/<sound>`: [n] float32."""
  try:
    seed, index, sound = path[len(SCHEME):].split("/")
    seed, index = int(seed), int(index)
    lo, hi = _DURATIONS[sound]
  except (ValueError, KeyError):
    raise ValueError(f"{path}: not a synthetic recording address "
                     f"({SCHEME}<seed>/<participant>/<sound>)") from None
  p = _participant(seed, index)
  rng = _rng(seed, index, zlib.crc32(sound.encode()))
  # Per-recording jitter of the participant's voice.
  p = dict(p, formants=p["formants"] * rng.uniform(0.97, 1.03, 3),
           f0=p["f0"] * rng.uniform(0.95, 1.05))
  n = int(rng.uniform(lo, hi) * sample_rate)
  t = np.arange(n, dtype=np.float32) / np.float32(sample_rate)
  symptom = rng.random() < SYMPTOM_PROB[p["label"]]
  if sound.startswith("breathing"):
    x = _breathing(rng, t, sample_rate, p, deep=sound.endswith("deep"), wheeze=symptom)
  else:
    x = _cough(rng, t, sample_rate, p, heavy=sound.endswith("heavy"), wet=symptom)
  x += 0.002 * rng.standard_normal(n, np.float32)  # recording noise floor
  x *= p["loudness"] / (np.max(np.abs(x)) + 1e-12)
  return x.astype(np.float32)


def _breathing(rng, t, rate, p, *, deep: bool, wheeze: bool) -> np.ndarray:
  breath_rate = p["breath_rate"] * (0.7 if deep else 1.3)
  cycle = np.sin(2 * np.pi * breath_rate * t + rng.uniform(0, 2 * np.pi))
  # Inhale (positive half) louder than exhale; a floor keeps pauses audible.
  amp = np.where(cycle > 0, 1.0, 0.6) * cycle * cycle + 0.05
  x = _shaped_noise(rng, t.size, rate, p) * amp * (1.0 if deep else 0.5)
  if wheeze:
    f = rng.uniform(400, 900) * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    tone = np.sin(2 * np.pi * np.cumsum(f) / rate)
    exhale = np.clip(-cycle, 0, None)
    x += 10 ** (-22 / 20) * np.sqrt(2) * tone * exhale * (1.0 if deep else 0.5)
  return x


def _cough(rng, t, rate, p, *, heavy: bool, wet: bool) -> np.ndarray:
  """Bursts: a noisy explosive phase, then a voiced tail at the participant's f0."""
  n = t.size
  noise = _shaped_noise(rng, n, rate, p)
  burst = p["burst_s"] * (1.3 if heavy else 0.8) * (1.15 if wet else 1.0)
  # Each burst is rendered over the window where its envelope is non-negligible.
  tt = t[:min(n, int(6 * 0.45 * burst * rate))]
  attack = 1.0 - np.exp(-tt / 0.004)
  explosive = (1.0 if heavy else 0.6) * attack * np.exp(-tt / (0.12 * burst))
  tail = 0.35 * (1.0 if heavy else 0.7) * attack * np.exp(-tt / (0.45 * burst))
  harmonics = np.arange(1, 9)[:, None]
  weights = p["harmonic_decay"] ** (harmonics - 1)
  voiced = (weights * np.sin(2 * np.pi * p["f0"] * harmonics * tt)).sum(0)
  voiced *= tail / np.sqrt(0.5 * np.sum(weights**2))
  if wet:
    # A rattle: low-pitched (< 300 Hz) noise riding on the voiced tail, gated at
    # 6-12 Hz, a rate that 25 ms frames at a 10 ms hop resolve.
    gate = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(6, 12) * tt)
    voiced += RATTLE_GAIN * tail * gate * _lowpass_noise(rng, tt.size, rate, 300.0)
  x = np.zeros(n, np.float32)
  onsets = np.arange(rng.uniform(0.05, 0.3), t[-1] - burst, burst + rng.uniform(0.25, 0.6))
  for onset in onsets:
    i = int(onset * rate)
    m = min(tt.size, n - i)
    x[i:i + m] += explosive[:m] * noise[i:i + m] + voiced[:m]
  return x


def _lowpass_noise(rng, n: int, rate: int, cutoff_hz: float) -> np.ndarray:
  """White noise with everything above `cutoff_hz` removed."""

  def shape(spec):
    spec[int(cutoff_hz / rate * 2 * (spec.size - 1)):] = 0

  return _filtered_noise(rng, n, shape)


def from_config(cfg) -> list[Recording]:
  """`config.data` fields: num_participants, seed, sounds."""
  return manifest(cfg.num_participants, cfg.seed, tuple(cfg.sounds) or PRETRAIN_SOUNDS)
