"""Audio front end: psf equivalence on real audio, bad inputs, clipping edge cases."""

import os

import numpy as np
import pytest
import python_speech_features as psf
import soundfile as sf
import soxr

from coughjax import audio
from coughjax import audio_jax


def _real_signals(root, n=12):
  paths = sorted(root.glob("audio/*/*.flac"))
  # Spread over participants and sounds (cough, breathing) rather than the first few.
  picks = paths[:: max(1, len(paths) // n)][:n]
  return [(p, sf.read(p, dtype="float64")[0]) for p in picks]


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_logfbank_matches_psf_on_real_audio(coswara_ci, rate):
  for path, x in _real_signals(coswara_ci):
    if rate != 16000:  # the subset is stored at 16 kHz; bring it to the test rate
      x = soxr.resample(x, 16000, rate, quality="HQ")
    _, _, nfft = audio.frame_params(rate)
    ref = psf.logfbank(x, rate, nfilt=64, nfft=nfft)
    ours = audio.logfbank(x, rate)
    assert ours.shape == ref.shape == (audio.num_frames(x.size, rate), 64)
    assert np.max(np.abs(ours - ref)) <= 1e-4, path


def test_logfbank_default_nfft_covers_window():
  assert audio.frame_params(16000) == (400, 160, 512)
  assert audio.frame_params(44100) == (1103, 441, 2048)
  assert audio.frame_params(48000) == (1200, 480, 2048)


def test_logfbank_truncating_nfft_matches_psf():
  x = np.random.default_rng(0).normal(size=20000) * 0.1
  np.testing.assert_allclose(audio.logfbank(x, 44100, nfft=512),
                             psf.logfbank(x, 44100, nfilt=64, nfft=512), atol=1e-4)


@pytest.mark.parametrize("n", [1, 399, 400, 401, 560, 16000])
def test_logfbank_frame_counts_and_edges(n):
  x = np.random.default_rng(n).normal(size=n) * 0.1
  ref = psf.logfbank(x, 16000, nfilt=64)
  np.testing.assert_allclose(audio.logfbank(x), ref, atol=1e-4)
  # Digital silence inside a recording hits psf's eps floor the same way.
  z = np.concatenate([x, np.zeros(4000)])
  np.testing.assert_allclose(audio.logfbank(z), psf.logfbank(z, 16000, nfilt=64), atol=1e-4)


def test_mel_filterbank_identical_to_psf():
  for rate, nfft in [(16000, 512), (44100, 2048), (8000, 256)]:
    np.testing.assert_array_equal(audio.mel_filterbank(64, nfft, rate),
                                  psf.get_filterbanks(64, nfft, rate))


def test_logfbank_jax_close_to_numpy(coswara_ci):
  _, x = _real_signals(coswara_ci, n=1)[0]
  ours = audio.logfbank(x)
  jx = np.asarray(audio_jax.logfbank(x.astype(np.float32)))
  assert jx.shape == ours.shape
  # float32 FFT: loud bands agree closely, the quietest ones less so.
  assert np.median(np.abs(jx - ours)) < 1e-3


def test_logfbank_rejects_bad_signal():
  with pytest.raises(ValueError, match="non-empty 1-D"):
    audio.logfbank(np.zeros((0,)))
  with pytest.raises(ValueError, match="non-empty 1-D"):
    audio.logfbank(np.zeros((10, 2)))


# ------------------------------------------------------------------------- load


def _write(path, data, rate=16000, **kw):
  sf.write(path, data, rate, **kw)
  return path


def test_load_resamples_and_downmixes(tmp_path):
  t = np.arange(48000) / 48000
  left = 0.5 * np.sin(2 * np.pi * 440 * t)
  stereo = np.stack([left, 0.5 * left], axis=1)
  p = _write(tmp_path / "s.wav", stereo, 48000)
  y = audio.load(p)
  assert y.dtype == np.float32 and y.ndim == 1
  assert abs(y.size - 16000) <= 1
  # mono = channel mean: peak 0.375
  assert abs(np.max(np.abs(y[100:-100])) - 0.375) < 0.01


@pytest.mark.parametrize("fmt,ext", [("FLAC", "flac"), ("OGG", "ogg"), ("WAV", "wav"),
                                     ("MP3", "mp3")])
def test_load_formats(tmp_path, fmt, ext):
  x = 0.3 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
  p = tmp_path / f"a.{ext}"
  try:
    sf.write(p, x, 16000, format=fmt)
  except (sf.LibsndfileError, TypeError, ValueError) as e:
    pytest.skip(f"libsndfile cannot write {fmt} here: {e}")
  y = audio.load(p)
  assert abs(y.size - 16000) < 2000  # lossy codecs add encoder delay/padding
  assert np.max(np.abs(y)) > 0.1


def test_load_real_coswara(coswara_ci):
  p = next(iter(sorted(coswara_ci.glob("audio/*/cough-heavy.flac"))))
  y = audio.load(p)
  ref, rate = sf.read(p, dtype="float32")
  assert rate == 16000
  np.testing.assert_array_equal(y, ref)


def test_load_webm(tmp_path):
  av = pytest.importorskip("av")
  p = tmp_path / "rec.webm"
  rate = 48000
  x = (0.3 * np.sin(2 * np.pi * 300 * np.arange(rate) / rate)).astype(np.float32)
  with av.open(str(p), "w", format="webm") as c:
    s = c.add_stream("libopus", rate=rate)
    s.layout = "mono"
    frame = av.AudioFrame.from_ndarray(x[None], format="flt", layout="mono")
    frame.rate = rate
    for packet in s.encode(frame):
      c.mux(packet)
    for packet in s.encode(None):
      c.mux(packet)
  y = audio.load(p)
  assert abs(y.size - 16000) < 1600 and np.max(np.abs(y)) > 0.1


def test_load_webm_without_pyav_names_the_extra(tmp_path, monkeypatch):
  import builtins  # pylint: disable=g-import-not-at-top
  real_import = builtins.__import__

  def no_av(name, *args, **kwargs):
    if name == "av":
      raise ImportError("No module named 'av'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_av)
  p = tmp_path / "x.webm"
  p.write_bytes(b"\x1a\x45\xdf\xa3")
  with pytest.raises(audio.AudioError, match=r"x\.webm: .*coughjax\[webm\]"):
    audio.load(p)


def test_load_missing(tmp_path):
  with pytest.raises(audio.AudioError, match=r"nope\.wav: file not found"):
    audio.load(tmp_path / "nope.wav")


def test_load_corrupt(tmp_path):
  p = tmp_path / "bad.wav"
  p.write_bytes(b"RIFF\x00\x00garbage, not audio")
  with pytest.raises(audio.AudioError, match=r"bad\.wav: cannot decode audio"):
    audio.load(p)


def test_load_corrupt_webm(tmp_path):
  pytest.importorskip("av")
  p = tmp_path / "bad.webm"
  p.write_bytes(b"not a webm file at all")
  with pytest.raises(audio.AudioError, match=r"bad\.webm: cannot decode audio"):
    audio.load(p)


def test_load_empty(tmp_path):
  p = _write(tmp_path / "empty.wav", np.zeros((0,)))
  with pytest.raises(audio.AudioError, match=r"empty\.wav: no audio samples"):
    audio.load(p)


def test_load_silent(tmp_path):
  p = _write(tmp_path / "silent.flac", np.zeros(16000))
  with pytest.raises(audio.AudioError, match=r"silent\.flac: audio is silent"):
    audio.load(p)


def test_load_nan(tmp_path):
  x = np.full(16000, 0.1, np.float32)
  x[100] = np.nan
  x[200] = np.inf
  p = _write(tmp_path / "nan.wav", x, subtype="FLOAT")
  with pytest.raises(audio.AudioError, match=r"nan\.wav: 2 NaN/inf samples"):
    audio.load(p)


def test_load_too_short(tmp_path):
  p = _write(tmp_path / "short.wav", np.full(4000, 0.1))
  with pytest.raises(audio.AudioError, match=r"short\.wav: too short: 0\.250 s < minimum 0\.5 s"):
    audio.load(p, min_duration=0.5)
  assert audio.load(p).size == 4000


def test_load_directory(tmp_path):
  with pytest.raises(audio.AudioError, match="is a directory"):
    audio.load(tmp_path)


def test_load_names_empty_truncated_and_non_regular_files(tmp_path):
  p = tmp_path / "zero.flac"
  p.write_bytes(b"")
  with pytest.raises(audio.AudioError, match=r"zero\.flac: empty file \(0 bytes\)"):
    audio.load(p)
  x = 0.3 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
  whole = _write(tmp_path / "whole.flac", x).read_bytes()
  cut = tmp_path / "cut.flac"
  cut.write_bytes(whole[:20])  # inside the header
  with pytest.raises(audio.AudioError, match=r"cut\.flac: cannot decode audio: not a "
                                             r"recognised audio format, or its header is "
                                             r"damaged or truncated \(20 bytes"):
    audio.load(cut)
  cut.write_bytes(whole[:len(whole) // 2])  # inside the audio data
  with pytest.raises(audio.AudioError, match=r"cut\.flac: cannot decode audio: truncated "
                                             r"or corrupt .*declares 16000 frames at 16000 Hz"):
    audio.load(cut)
  fifo = tmp_path / "pipe.wav"
  os.mkfifo(fifo)  # opening it to read would block forever
  for path in (fifo, "/dev/zero"):
    with pytest.raises(audio.AudioError, match="not a regular file"):
      audio.load(path)


# ---------------------------------------------------------------------- from_array


def test_integer_pcm_is_scaled_as_soundfile_reads_it(tmp_path):
  x = 0.5 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
  for subtype, dtype in (("PCM_16", "int16"), ("PCM_32", "int32")):
    p = _write(tmp_path / f"{subtype}.wav", x, subtype=subtype)
    as_float, _ = sf.read(p, dtype="float32")
    as_int, _ = sf.read(p, dtype=dtype)
    np.testing.assert_array_equal(audio.from_array(as_int, 16000), as_float)
    np.testing.assert_array_equal(audio.from_array(as_float, 16000), as_float)
  p = _write(tmp_path / "u8.wav", x, subtype="PCM_U8")
  as_float, _ = sf.read(p, dtype="float32")
  with open(p, "rb") as f:  # 8-bit wav stores offset-binary bytes after a 44-byte header
    raw = np.frombuffer(f.read()[44:], np.uint8)
  assert raw.size == x.size
  np.testing.assert_array_equal(audio.from_array(raw, 16000), as_float)
  np.testing.assert_array_equal(audio.from_array(np.array([-128, 127], np.int8), 16000,
                                                 16000), [-1.0, 127 / 128])


def test_waveform_layouts_are_recognised_or_rejected_by_name():
  rng = np.random.default_rng(0)
  stereo = rng.uniform(-0.5, 0.5, size=(16000, 2)).astype(np.float32)
  mono = audio.from_array(stereo, 16000)
  np.testing.assert_array_equal(mono, stereo.mean(axis=1))
  np.testing.assert_array_equal(audio.from_array(stereo.T, 16000), mono)  # [2, N]
  np.testing.assert_array_equal(audio.from_array(stereo[:, :1].T, 16000), stereo[:, 0])
  for bad in (np.zeros((100, 100)), np.zeros((2, 3, 4)), np.float32(0.5)):
    with pytest.raises(audio.AudioError, match=r"^rec: waveform of shape .* expected "
                                               r"\[samples\]"):
      audio.from_array(bad, 16000, name="rec")
  for bad, what in ((stereo > 0, "bool"), (stereo.astype(np.complex64), "complex64"),
                    (np.array(["a", "b"]), "<U1"), (np.array([0.1, None]), "object"),
                    (np.arange(16000), "int64"), (np.zeros(10, np.uint16), "uint16")):
    with pytest.raises(audio.AudioError, match=f"^rec: {what} "):
      audio.from_array(bad, 16000, name="rec")
  with pytest.raises(audio.AudioError, match="^rec: not an array of audio samples"):
    audio.from_array([[0.1, 0.2], [0.3]], 16000, name="rec")


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, float("nan"), True, "16000", None])
def test_sample_rate_must_be_a_positive_integer(rate):
  with pytest.raises(audio.AudioError, match=r"^rec: sample_rate must be a positive "
                                             r"integer \(Hz\), got"):
    audio.from_array(np.full(16000, 0.1, np.float32), rate, name="rec")


def test_from_array_checks_like_load():
  x = np.full(16000, 0.1, np.float32)
  assert audio.from_array(x, np.int64(16000)).size == 16000
  assert audio.from_array(x, 16000.0, 8000).size == 8000
  for rate in (500, 2**31 - 1):  # as a damaged header may claim: 1 Hz would need 16,000x
    with pytest.raises(audio.AudioError, match=f"^rec: sample rate {rate} Hz is outside the "
                                               "1000-1000000 Hz"):
      audio.from_array(x, rate, name="rec")
  for wave, reason in ((np.zeros(0), "no audio samples"), (np.zeros(100), "silent"),
                       (np.array([0.1, np.nan]), "1 NaN/inf samples"),
                       (x[:4000], r"too short: 0\.250 s < minimum 0\.5 s")):
    with pytest.raises(audio.AudioError, match=f"^rec: .*{reason}"):
      audio.from_array(wave, 16000, min_duration=0.5, name="rec")


# ------------------------------------------------------------------------ clips


def _feats(t):
  return np.arange(t * 64, dtype=np.float32).reshape(t, 64)


def test_clips_exactly_96():
  c = audio.clips(_feats(96))
  assert c.shape == (1, 96, 64)
  np.testing.assert_array_equal(c[0], _feats(96))


def test_clips_95_is_repeat_padded():
  c = audio.clips(_feats(95), min_frames=49)
  assert c.shape == (1, 96, 64)
  np.testing.assert_array_equal(c[0, :95], _feats(95))
  np.testing.assert_array_equal(c[0, 95], _feats(95)[0])


def test_padding_no_longer_marks_short_recordings():
  """A short recording's padded clip holds only its own frames, so its clip
  statistics (each band's peak and floor, every frame's energy) are those of its
  unpadded frames; the zero block it used to get was a level no real log-mel frame
  of a quiet recording reaches (log energies are negative), louder than all of it."""
  f = np.random.default_rng(0).normal(-8, 2, size=(60, 64)).astype(np.float32)
  (c,) = audio.clips(f, min_frames=49)
  np.testing.assert_array_equal(c, np.concatenate([f, f[:36]]))
  np.testing.assert_array_equal(c.max(axis=0), f.max(axis=0))
  np.testing.assert_array_equal(c.min(axis=0), f.min(axis=0))
  assert set(c.mean(axis=1).tolist()) == set(f.mean(axis=1).tolist())
  zero_padded = np.concatenate([f, np.zeros((36, 64), np.float32)])
  assert zero_padded.mean(axis=1).max() > f.mean(axis=1).max()   # the old cue
  np.testing.assert_array_equal(audio.pad_to_clip(f, 50), f)     # long enough: as is
  # Shorter than half a clip: tiled several times.
  np.testing.assert_array_equal(audio.pad_to_clip(f[:40], 96)[80:], f[:16])


def test_clips_97_drops_tail():
  c = audio.clips(_feats(97))
  assert c.shape == (1, 96, 64)
  np.testing.assert_array_equal(c[0], _feats(97)[:96])


def test_clips_overlapping_hop():
  c = audio.clips(_feats(97), hop=1)
  assert c.shape == (2, 96, 64)
  np.testing.assert_array_equal(c[1], _feats(97)[1:])


def test_clips_very_long():
  f = _feats(96 * 1000 + 50)
  c = audio.clips(f, hop=96)
  assert c.shape == (1000, 96, 64)
  np.testing.assert_array_equal(c[-1], f[96 * 999:96 * 1000])


def test_clips_too_short_is_a_clear_skip():
  min_frames = audio.min_frames_for(0.5)
  assert min_frames == 49  # 0.5 s at 16 kHz, 25 ms frames every 10 ms
  with pytest.raises(audio.AudioError, match=r"rec\.wav: too short: 48 frames < minimum 49"):
    audio.clips(_feats(48), min_frames=min_frames, name="rec.wav")
  assert audio.clips(_feats(49), min_frames=min_frames).shape == (1, 96, 64)


def test_clips_bad_params():
  with pytest.raises(ValueError, match="must be positive"):
    audio.clips(_feats(100), hop=0)
