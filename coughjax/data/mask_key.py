"""The mask key of a recording: 64 bits of a digest of its log-mel features.

Inference (DS) masks are a function of the recording alone: each is drawn from a
seed hashed from this key, the clip's index in the recording and the branch (see
`infer.py`, which derives them with the counter hash of `models/randomness.py`). The key lives here, below both the input pipeline (a pack stores every
row's key as it is written: `coughjax.data.packed`) and inference, and needs
nothing but numpy: computing it does not pull in JAX or the models.

Why the features: they are the recording as the model sees it, computed by the same
deterministic numpy code (`coughjax.audio.logfbank`, float32) from the decoded audio
in training, evaluation and `predict`, so they are bit-identical however the file is
named, where it lies or in which order it is scored, while a file's path is not
(and Python's `hash` is salted per process). Their bytes are hashed with an explicit
little-endian float32 layout and the shape, so the key does not depend on the
platform's byte order either. A recording whose features change (other feature
parameters, a re-encoded file) gets other masks — as it gets another score anyway.
"""

from __future__ import annotations

import hashlib

import numpy as np

from coughjax import audio


def recording_key(features: np.ndarray, clip_frames: int) -> np.ndarray:
  """The mask key of one recording: [2] uint32 from a digest of its features.

  Args:
    features: [T, mel] log-mel features of the whole recording (as computed by
      `audio.logfbank`; padded or not to one clip: the same key either way).
    clip_frames: frames per clip.

  Returns:
    [2] uint32, 64 bits of BLAKE2b over the shape and the little-endian float32
    bytes of `audio.pad_to_clip(features)` (repeat-padded to one clip).
  """
  feats = np.ascontiguousarray(audio.pad_to_clip(np.asarray(features), clip_frames),
                               dtype="<f4")
  digest = hashlib.blake2b(digest_size=8)
  digest.update(np.asarray(feats.shape, "<i8").tobytes())
  digest.update(feats.tobytes())
  return np.frombuffer(digest.digest(), "<u4").astype(np.uint32)
