"""Fuzz cases for the audio reader and the metadata readers, run in a child process.

  python tests/fuzz_readers.py audio|real|metadata SEED [REAL_FILE ...]

audio: random bytes, known format starts followed by garbage, WAV headers with odd
fields; real: truncations at many offsets and bit flips of the given recordings and
of re-encodings (wav, ogg, mp3, webm) of the first; metadata: covid19_cough
metadata.json, Coswara labels.csv / metadata.json / combined_data.csv and CSV
manifests, as random bytes, truncations, changed bytes, wrong types, and paths that
leave the root or name a fifo or a device.

Runs every case of the mode on files made in a temporary folder, each ending in an
outcome (its value, or the exception type and message), and prints one JSON line:
{"cases": n, "failures": [...], "seconds": ...}. A case fails if it raises anything
but the documented error (`coughjax.audio.AudioError` for audio; ValueError or
FileNotFoundError naming the file for metadata), returns something malformed, or
takes longer than `CASE_SECONDS`. Run in a child (tests/test_fuzz.py) so that a
crash of a native decoder or a hang fails the test instead of killing it; each case
is announced on stderr first, so the last one there is the culprit.
"""

import functools
import json
import os
import pathlib
import random
import shutil
import struct
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from coughjax import audio  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.data import coswara  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.data import covid19_cough  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.data import features  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.data import manifest  # pylint: disable=g-import-not-at-top,wrong-import-position

CASE_SECONDS = 10.0
SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".webm", ".m4a", "")
# Starts of the formats libsndfile and PyAV recognise: fuzzing past the first check.
MAGIC = (b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC\x00\x00\x00\x22", b"OggS\x00\x02",
         b"ID3\x03\x00\x00\x00\x00\x00\x00", b"\xff\xfb\x90\x64", b"\x1aE\xdf\xa3",
         b"FORM\x00\x00\x00\x00AIFF", b".snd", b"caff\x00\x01")


class Runner:
  """Runs cases, collecting what went wrong."""

  def __init__(self):
    self.cases, self.returned, self.failures = 0, 0, []

  def run(self, name: str, fn, check) -> None:
    self.cases += 1
    print(f"case {self.cases}: {name}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
      value = fn()
      self.returned += 1
      problem = check(value, None)
    except Exception as e:  # pylint: disable=broad-except
      problem = check(None, e)
    seconds = time.perf_counter() - start
    if seconds > CASE_SECONDS:
      problem = (problem or "") + f" took {seconds:.1f} s"
    if problem:
      self.failures.append(f"{name}: {problem}")


def audio_outcome(path: pathlib.Path):
  """The check of an `audio.load` case: a finite mono float32 array or AudioError
  naming the file."""

  def check(value, error):
    if error is not None:
      if not isinstance(error, audio.AudioError):
        return f"raised {type(error).__name__}: {error}"
      return None if str(path) in str(error) else f"error does not name the file: {error}"
    if not (isinstance(value, np.ndarray) and value.dtype == np.float32 and value.ndim == 1
            and value.size and np.all(np.isfinite(value))):
      return f"returned {type(value).__name__} {getattr(value, 'shape', '')}"
    return None

  return check


def _wav_header(fmt: int, channels: int, rate: int, bits: int, data_size: int) -> bytes:
  block = max(1, channels * max(bits, 8) // 8) & 0xFFFF
  return (b"RIFF" + struct.pack("<I", (36 + data_size) & 0xFFFFFFFF) + b"WAVEfmt "
          + struct.pack("<IHHIIHH", 16, fmt, channels, rate, (rate * block) & 0xFFFFFFFF,
                        block, bits)
          + b"data" + struct.pack("<I", data_size & 0xFFFFFFFF))


def _other_formats(real: list[str], tmp: pathlib.Path) -> list[str]:
  """The first real recording's first 2 s re-encoded as wav, ogg, mp3 and (with
  PyAV) webm/opus: every decoder coughjax uses gets truncated input."""
  if not real:
    return []
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  x, rate = sf.read(real[0], dtype="float32", frames=2 * 16000)
  out = []
  for fmt, subtype in (("WAV", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")):
    path = tmp / f"derived.{fmt.lower()}"
    try:
      sf.write(path, x, rate, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, TypeError, ValueError):
      continue  # this libsndfile cannot write it
    out.append(str(path))
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError:
    return out
  path = tmp / "derived.webm"
  with av.open(str(path), "w", format="webm") as container:
    stream = container.add_stream("libopus", rate=48000)
    stream.layout = "mono"
    frame = av.AudioFrame.from_ndarray(np.repeat(x, 3)[None], format="flt", layout="mono")
    frame.rate = 48000
    for packet in [*stream.encode(frame), *stream.encode(None)]:
      container.mux(packet)
  return out + [str(path)]


def _load_case(runner: Runner, tmp: pathlib.Path, name: str, blob: bytes, suffix: str
               ) -> None:
  path = tmp / f"case{runner.cases}{suffix}"
  path.write_bytes(blob)
  runner.run(name, lambda: audio.load(path, min_duration=0.0), audio_outcome(path))


def audio_cases(runner: Runner, rng: random.Random, tmp: pathlib.Path):
  load_case = functools.partial(_load_case, runner, tmp)

  for i in range(150):  # random bytes
    n = rng.choice((0, 1, 4, 12, 44, 100, 1000, 4096, 20000))
    load_case(f"random {n} bytes", rng.randbytes(n), SUFFIXES[i % len(SUFFIXES)])
  for magic in MAGIC:  # a known start, then garbage
    for suffix in (".wav", ".flac", ".mp3", ".webm"):
      load_case(f"magic {magic[:4]!r} + garbage", magic + rng.randbytes(rng.choice(
          (0, 8, 300, 5000))), suffix)
  for _ in range(40):  # WAV headers with odd fields, random payloads
    fields = (rng.choice((1, 3, 0xFFFE, 0x55, 0)), rng.choice((0, 1, 2, 255, 65535)),
              rng.choice((0, 1, 8000, 44100, 0x7FFFFFFF, 0xFFFFFFFF)),
              rng.choice((0, 7, 8, 16, 24, 32, 64)),
              rng.choice((0, 100, 3200, 0xFFFFFFFF)))
    load_case(f"wav header fmt/channels/rate/bits/size {fields}",
              _wav_header(*fields) + rng.randbytes(rng.choice((0, 10, 3200))), ".wav")
  # Float WAV holding NaN and inf samples.
  load_case("float wav of NaN/inf", _wav_header(3, 1, 16000, 32, 8000) + np.tile(
      np.array([np.nan, np.inf, -np.inf, 0.5], "<f4"), 500).tobytes(), ".wav")
  # The feature cache over the same kind of files (it calls audio.load, hashes first).
  junk = [tmp / f"cache{i}{SUFFIXES[i % len(SUFFIXES)]}" for i in range(10)]
  for i, p in enumerate(junk):
    p.write_bytes(rng.randbytes(i * 300))
  records = [manifest.Recording(str(p), "p", "cough") for p in junk]

  def cache_check(value, error):
    if error is not None:
      return f"raised {type(error).__name__}: {error}"
    kept, _, skipped = value
    return None if len(kept) + len(skipped) == len(junk) else f"lost records: {value}"

  runner.run("feature cache over junk files",
             lambda: features.FeatureCache(root=tmp / "cache").resolve(
                 records, workers=1, progress=False), cache_check)


def real_audio_cases(runner: Runner, rng: random.Random, tmp: pathlib.Path,
                     real: list[str]):
  load_case = functools.partial(_load_case, runner, tmp)

  for src in real + _other_formats(real, tmp):  # truncated and corrupted real audio
    blob = pathlib.Path(src).read_bytes()
    suffix = pathlib.Path(src).suffix
    offsets = {0, 1, 2, 3, 4, 8, 12, 16, 36, 44, 64, 100, 128, 256, 512, 1000, 2048, 4096,
               len(blob) - 10, len(blob) - 1}
    offsets |= {k * len(blob) // 40 for k in range(40)}
    offsets |= {rng.randrange(len(blob)) for _ in range(20)}
    for cut in sorted(o for o in offsets if 0 <= o < len(blob)):
      load_case(f"{src} cut at {cut} of {len(blob)}", blob[:cut], suffix)
    for _ in range(10):
      flipped = bytearray(blob)
      for pos in rng.sample(range(len(blob)), 16):
        flipped[pos] ^= 1 << rng.randrange(8)
      load_case(f"{src} with 16 bit flips", bytes(flipped), suffix)


def metadata_outcome(root: pathlib.Path, named: pathlib.Path):
  """The check of a metadata case: recordings inside `root` that are regular files
  (or not yet existing), or ValueError / FileNotFoundError naming `named`."""
  real_root = os.path.realpath(root)

  def check(value, error):
    if error is not None:
      if not isinstance(error, (ValueError, FileNotFoundError)):
        return f"raised {type(error).__name__}: {error}"
      return None if (str(named) in str(error) or str(root) in str(error)) else (
          f"error does not name the file: {error}")
    for r in value:
      if not isinstance(r, manifest.Recording):
        return f"returned {type(r).__name__}"
      if r.path.startswith(manifest.SYNTHETIC_SCHEME):
        continue
      real = os.path.realpath(r.path)
      if os.path.commonpath([real, real_root]) != real_root:
        return f"kept a path outside the root: {r.path}"
      if os.path.lexists(real) and not os.path.isfile(real):
        return f"kept a non-regular file: {r.path}"
    return None

  return check


def _mutations(rng: random.Random, text: str, extra: list[str]) -> list[tuple[str, bytes]]:
  """Random bytes, every-offset truncations (sampled), byte flips, and `extra`."""
  blob = text.encode()
  out = [(f"random {n} bytes", rng.randbytes(n)) for n in (0, 1, 10, 200, 3000)]
  cuts = sorted({rng.randrange(len(blob)) for _ in range(25)} | {0, 1, len(blob) - 1})
  out += [(f"cut at {c}", blob[:c]) for c in cuts]
  for _ in range(8):
    b = bytearray(blob)
    for pos in rng.sample(range(len(b)), 4):
      b[pos] = rng.randrange(256)
    out.append(("4 random bytes changed", bytes(b)))
  out += [(f"variant {i}: {e[:60]!r}", e.encode()) for i, e in enumerate(extra)]
  out += [("NUL byte", blob[:len(blob) // 2] + b"\x00" + blob[len(blob) // 2:]),
          ("UTF-8 BOM", b"\xef\xbb\xbf" + blob), ("latin-1", text.encode() + b"\xe9\xff")]
  return out


def metadata_cases(runner: Runner, rng: random.Random, tmp: pathlib.Path):
  outside = tmp / "outside.mp3"
  outside.write_bytes(b"outside")
  os.mkfifo(tmp / "fifo.mp3")
  escapes = ["../outside.mp3", "../../outside.mp3", str(outside), "/dev/zero",
             "../fifo.mp3", "raw/../../outside.mp3", "a\x00b.mp3", "x" * 5000, "",
             "..", ".", "/", "sub/../../../outside.mp3", "a.mp3/", "a.mp3/x", "fifo"]

  # covid19_cough metadata.json
  cc = tmp / "cc"
  (cc / "raw").mkdir(parents=True)
  for name in ("a.mp3", "b.mp3"):
    (cc / "raw" / name).write_bytes(name.encode() * 10)
  os.mkfifo(cc / "raw" / "fifo")
  good = [dict(filename="a.mp3", covid19=True, source="telegram", verified=False),
          dict(filename="b.mp3", covid19=False, source="call-center")]
  extra = [json.dumps(v) for v in (
      [], {}, "text", 5, None, [1, 2], [{"filename": 1, "covid19": True, "source": "x"}],
      [{"filename": "a.mp3", "covid19": "yes", "source": "telegram"}],
      [{"filename": "a.mp3"}], [{"filename": "a.mp3", "covid19": True, "source": ["x"]}],
      [dict(good[0], filename="a.mp3"), dict(good[0], filename="a.mp3")],
      *([dict(good[0], filename=e)] + good[1:] for e in escapes))]
  for name, blob in _mutations(rng, json.dumps(good), extra):
    (cc / "metadata.json").write_bytes(blob)
    runner.run(f"covid19_cough metadata.json {name}", lambda: covid19_cough.manifest(cc),
               metadata_outcome(cc, cc / "metadata.json"))

  # Coswara labels.csv (flat layout), combined_data.csv and metadata.json (extracted)
  cw = tmp / "cw"
  (cw / "audio" / "p").mkdir(parents=True)
  (cw / "audio" / "p" / "cough-heavy.flac").write_bytes(b"x" * 100)
  os.mkfifo(cw / "fifo")
  header = "participant_id,sound,path,covid_status,age,gender\n"
  row = "p,cough-heavy,audio/p/cough-heavy.flac,healthy,30,male\n"
  extra = ["path\n", header, header + "p,cough-heavy\n", header + row + "p,x,y,z,1,2,3,4\n",
           header + '"p,cough-heavy,audio\n', header + "p,cough-heavy," + "y" * 200000 + "\n",
           *(header + f"p,cough-heavy,{e},healthy,30,male\n" for e in escapes)]
  for name, blob in _mutations(rng, header + row, extra):
    (cw / "labels.csv").write_bytes(blob)
    runner.run(f"coswara labels.csv {name}",
               lambda: coswara.manifest(cw, label="covid_status", sounds=None),
               metadata_outcome(cw, cw / "labels.csv"))
  ex = tmp / "cx"
  (ex / "20200101" / "p").mkdir(parents=True)
  (ex / "20200101" / "p" / "cough-heavy.wav").write_bytes(b"x" * 100)
  for name, blob in _mutations(rng, json.dumps({"covid_status": "healthy", "g": "male",
                                                "a": "30"}),
                               ['{"g": 5, "a": [1]}', "[1, 2]", '"male"', '{"a": "NaN"}']):
    (ex / "20200101" / "p" / "metadata.json").write_bytes(blob)
    for label in ("covid_status", "sex", "age"):
      runner.run(f"coswara metadata.json {name} ({label})",
                 lambda label=label: coswara.manifest(ex, label=label, sounds=None),
                 metadata_outcome(ex, ex / "20200101" / "p" / "metadata.json"))
  for name, blob in _mutations(rng, "id,a,covid_status,g\np,61,positive_mild,female\n",
                               ["a,b\n1,2\n", "id\n"]):
    (ex / "combined_data.csv").write_bytes(blob)
    runner.run(f"coswara combined_data.csv {name}",
               lambda: coswara.manifest(ex, label="sex", sounds=None),
               metadata_outcome(ex, ex / "combined_data.csv"))

  # A CSV manifest
  mf = tmp / "mf"
  mf.mkdir()
  (mf / "a.wav").write_bytes(b"x" * 100)
  (mf / "a.mp3").write_bytes(b"x" * 100)
  os.mkfifo(mf / "fifo")
  header = "path,participant_id,sound,label,stratum\n"
  extra = [header, "path\n", header + "a.wav,p,cough,2,\n", header + "a.wav,p\n",
           header + "synthetic://0/1/cough-heavy,p,cough,1,\n",
           *(header + f"{e},p,cough,1,\n" for e in escapes)]
  for name, blob in _mutations(rng, header + "a.wav,p,cough,1,s\n", extra):
    (mf / "m.csv").write_bytes(blob)
    runner.run(f"CSV manifest {name}", lambda: manifest.read_csv(mf / "m.csv"),
               metadata_outcome(mf, mf / "m.csv"))


def main(mode: str, seed: int, real: list[str]) -> None:
  rng = random.Random(seed)
  runner = Runner()
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="coughjax-fuzz-"))
  start = time.perf_counter()
  try:
    if mode == "audio":
      audio_cases(runner, rng, tmp)
    elif mode == "real":
      real_audio_cases(runner, rng, tmp, real)
    else:
      metadata_cases(runner, rng, tmp)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(json.dumps({"cases": runner.cases, "returned": runner.returned,
                    "failures": runner.failures,
                    "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
