"""Inference: P(positive) of clips, with DS masks that depend only on the clip.

DS masking (paper Tables 5 and 6) draws a random key mask at inference too. For a
recording's score to be a function of the recording alone — the same in the
evaluation loop, in `coughjax.predict`, in an exported model and in the benchmarks,
wherever a clip sits in a batch, whatever other recordings are scored beside it,
and under any JAX version or PRNG setting — every mask comes from its own seed,
computed with the project's counter hash (`coughjax.models.randomness`: plain
uint32 arithmetic, no `jax.random`):

  seed(recording, clip, branch) = hash_words(MASK_SEED, r0, r1,
                                             clip index in the recording, branch index)
  noise[t] = fmix32(fmix32(t + MASK_SEED) ^ seed),  t = 0 .. T-1

The mask is the round(rate * T) smallest entries of the noise (`masking.lowest`), and
(r0, r1) = `mask_key.recording_key(features)`: 64 bits of a BLAKE2b digest of the
recording's log-mel features (`coughjax.data.mask_key` says why the features).
Masks are handed to the encoders through their `mask=` argument, so nothing
depends on the batch.

Training draws its masks from the step's 'mask' stream instead (fresh every step).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from coughjax.data import mask_key
from coughjax.models import chunking
from coughjax.models import masking
from coughjax.models import randomness

# The root of every inference mask seed. A constant: a score must not depend on the
# run, the process or the caller (a benchmark, the evaluation loop, predict).
MASK_SEED = 0


def store_recording_keys(store) -> np.ndarray:
  """`mask_key.recording_key` of every recording of a `pipeline.ClipStore`:
  [n, 2] uint32.

  A store from a pack has them already (computed as the pack was written): they are
  read, not recomputed through the memory map, after the first recording's is
  checked against `mask_key.recording_key` (a pack written under another definition
  fails here instead of keying masks differently). Others are computed once and kept
  on the store.
  """
  def key(i):
    o, n = store.offsets[i], store.lengths[i]
    return mask_key.recording_key(store.frames[o:o + n], store.clip_frames)

  keys = store.recording_keys
  if keys is None:
    keys = store.recording_keys = np.stack([key(i) for i in range(len(store))])
  elif len(keys) and not np.array_equal(keys[0], key(0)):
    raise ValueError(
        f"{getattr(store.frames, 'filename', 'store')}: its stored key of "
        f"{store.records[0].path} ({keys[0].tolist()}) is not its recording_key "
        f"({key(0).tolist()}); the pack is from another version: delete it (that "
        "file and its .index.npz) to rebuild it")
  return keys


def clip_seeds(rec_keys: jax.Array, clip_index: jax.Array) -> jax.Array:
  """Per-row mask seeds before the branch: [n, 2] uint32 recording keys, [n] clip
  indices -> [n] uint32, `hash_words(MASK_SEED, r0, r1, clip index)`."""
  rec_keys = rec_keys.astype(jnp.uint32)
  return randomness.hash_words(MASK_SEED, rec_keys[:, 0], rec_keys[:, 1], clip_index)


def inference_mask_rate(encoder: nn.Module) -> Optional[float]:
  """The rate at which `encoder` masks at inference, or None if it does not."""
  active = getattr(encoder, "masking_active", None)
  if active is None or not active(False):
    return None
  return float(encoder.mask_rate)


def mask_noise(seeds: jax.Array, time: int, branch: int) -> jax.Array:
  """[n] `clip_seeds` -> [n, time] uint32 mask noise of branch `branch`."""
  seeds = randomness.hash_words(branch, start=seeds)
  return randomness.counter_bits(jnp.uint32(MASK_SEED), seeds, (seeds.shape[0], time))


def branch_mask(encoder: nn.Module, seeds: jax.Array, time: int, branch: int,
                rate: Optional[float] = None) -> Optional[jax.Array]:
  """One branch's inference masks: [n, time] bool (True = masked), or None where
  `encoder` does not mask at inference. Branch `branch` hashes its index into every
  seed, so two branches of an ensemble draw different masks. `rate` overrides the
  encoder's own (0 then draws and applies an all-False mask)."""
  rate = inference_mask_rate(encoder) if rate is None else float(rate)
  if rate is None:
    return None
  return masking.lowest(mask_noise(seeds, time, branch), rate)


def branch_masks(encoders: Sequence[nn.Module], seeds: jax.Array, time: int,
                 mask_rates: Optional[Sequence[Optional[float]]] = None
                 ) -> tuple[Optional[jax.Array], ...]:
  """Each branch's inference masks from per-row seeds.

  Args:
    encoders: the classifier's encoders (branch i is `branch_mask(..., branch=i)`).
    seeds: [n] per-row seeds (`clip_seeds`).
    time: time steps per clip.
    mask_rates: per branch, a rate to draw at instead of `inference_mask_rate`
      (None: the encoder's own). A rate of 0 then draws and applies an all-False
      mask rather than skipping masking, so every rate runs the same program
      (benchmarks/latency.py times DS masking like for like that way).

  Returns:
    Per branch, [n, time] bool (True = masked) or None where it does not mask.
  """
  mask_rates = (None,) * len(encoders) if mask_rates is None else tuple(mask_rates)
  if len(mask_rates) != len(encoders):
    raise ValueError(f"{len(mask_rates)} mask rates for {len(encoders)} encoders")
  return tuple(branch_mask(e, seeds, time, i, r)
               for i, (e, r) in enumerate(zip(encoders, mask_rates)))


def _in_chunks(apply, args: tuple, n: int, chunk_size, encoders: Sequence[nn.Module]
               ) -> jax.Array:
  """apply(args) over row chunks of `chunk_size` ("auto": `chunking.inference_chunk_size`
  for these encoders; `chunking.chunk_size_for` picks a divisor of n)."""
  chunk = chunking.chunk_size_for(n, chunking.inference_chunk_size(chunk_size, encoders))
  if chunk == n:
    return apply(args)
  chunked = jax.tree.map(lambda a: a.reshape((n // chunk, chunk) + a.shape[1:]), args)
  out = jax.lax.map(apply, chunked)
  return out.reshape((n,) + out.shape[2:])


def _check_keys(n: int, rec_keys, clip_index) -> None:
  if rec_keys.shape != (n, 2) or clip_index.shape != (n,):
    raise ValueError(f"rec_keys {rec_keys.shape} / clip_index {clip_index.shape} do not "
                     f"match {n} clips (expected ({n}, 2) / ({n},))")


def probabilities(model: nn.Module, params: Any, x: jax.Array, rec_keys: jax.Array,
                  clip_index: jax.Array, *, chunk_size: int = 0,
                  mask_rates: Optional[Sequence[Optional[float]]] = None) -> jax.Array:
  """P(positive) of every clip, in inference mode: the one inference path.

  Used by the downstream evaluation (its per-device predict step), `coughjax.predict`
  and benchmarks/latency.py. Every row's output depends only on its own clip, key and
  index, not on the batch (up to float round-off of batched matmuls).

  Args:
    model: a `coughjax.models.classifier.Classifier`.
    params: its parameters.
    x: [n, T, mel] clips.
    rec_keys: [n, 2] uint32, each row's `mask_key.recording_key` (padding rows: anything).
    clip_index: [n] int, each row's clip index within its recording.
    chunk_size: run the model over chunks of this many rows (`chunking.chunk_size_for`;
      0 = all at once; "auto": `chunking.inference_chunk_size`, e.g. a config's
      `model.eval_chunk_size`), which bounds memory and keeps activations in cache.
    mask_rates: per branch, an inference mask rate overriding the encoder's
      (`branch_masks`); None, the default, is the model as configured.

  Returns:
    [n] float32 probabilities.
  """
  n, time = x.shape[:2]
  _check_keys(n, rec_keys, clip_index)

  def apply(args):
    xc, rk, ci = args
    masks = branch_masks(model.encoders, clip_seeds(rk, ci), time, mask_rates)
    return jax.nn.sigmoid(model.apply({"params": params}, xc, train=False, masks=masks))

  args = (x, rec_keys.astype(jnp.uint32), clip_index.astype(jnp.int32))
  return _in_chunks(apply, args, n, chunk_size, model.encoders)


def embeddings(encoder: nn.Module, params: Any, x: jax.Array,
               rec_keys: Optional[jax.Array] = None,
               clip_index: Optional[jax.Array] = None, *, branch: int = 0,
               chunk_size: int = 0) -> jax.Array:
  """An encoder's output h of every clip, in inference mode (no dropout).

  Where `encoder` masks at inference (`mask_at_eval`, e.g. a DS-masked ensemble
  branch), each clip's mask comes from its (recording, clip index, branch) seed as in
  `probabilities`, so branch i of a classifier sees exactly the masks it sees there;
  such an encoder needs `rec_keys` and `clip_index`. Otherwise they are ignored.

  Args:
    encoder: a registered encoder (`coughjax.models.build_encoder`).
    params: its parameters.
    x: [n, T, mel] clips.
    rec_keys: [n, 2] uint32 `mask_key.recording_key` of each row's recording, or None.
    clip_index: [n] int clip index within its recording, or None.
    branch: the branch index hashed into the mask seeds.
    chunk_size: as in `probabilities`.

  Returns:
    [n, d] float32.
  """
  n, time = x.shape[:2]
  masked = inference_mask_rate(encoder) is not None
  if masked:
    if rec_keys is None or clip_index is None:
      raise ValueError(f"{type(encoder).__name__} masks at inference (mask_rate "
                       f"{encoder.mask_rate}): its embeddings need rec_keys and clip_index")
    _check_keys(n, rec_keys, clip_index)
    args = (x, rec_keys.astype(jnp.uint32), clip_index.astype(jnp.int32))
  else:
    args = (x,)

  def apply(args):
    mask = branch_mask(encoder, clip_seeds(*args[1:]), time, branch) if masked else None
    h = encoder.apply({"params": params}, args[0], train=False, mask=mask)
    return h.astype(jnp.float32)

  return _in_chunks(apply, args, n, chunk_size, (encoder,))
