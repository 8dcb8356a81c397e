"""Per-clip randomness: masks and dropout depend on (key, stream, clip id) only, so a
train step gives the same result on the whole batch or in chunks, on 1 device or 4;
inference (DS) masks depend on the recording alone, whatever JAX's PRNG settings."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from configs import pretrain as pretrain_configs
from coughjax import infer
from coughjax import models
from coughjax.data import mask_key
from coughjax.models import chunking
from coughjax.models import masking
from coughjax.models import randomness
from coughjax.train import pretrain

IDS = jnp.asarray([3, 17, 4, 250, 9, 2**20 + 1, 0, 64], jnp.int32)
SUBSET = np.array([5, 1, 6, 3])  # a few of those clips, in another order


def _rows_match(draw, axis=0):
  """draw(clip_ids) for all of IDS, then for SUBSET alone: each clip's slice along
  `axis` must be bit-identical."""
  whole = np.asarray(draw(IDS))
  part = np.asarray(draw(IDS[SUBSET]))
  np.testing.assert_array_equal(np.take(whole, SUBSET, axis=axis), part)
  return whole


def test_draws_depend_on_the_clip_id_only():
  key = jax.random.key(1)
  shape = lambda ids, axis: tuple(np.insert([5, 3], axis, len(ids)))
  for axis in (0, 1, 2):
    bits = _rows_match(lambda ids, a=axis: randomness.clip_bits(key, ids, shape(ids, a), a),
                       axis)
    assert len(np.unique(bits)) == bits.size  # no two clips share a stream
  _rows_match(lambda ids: randomness.keep_mask(key, ids, (len(ids), 7, 5), 0.3))
  masks = _rows_match(lambda ids: masking.random_key_mask(key, len(ids), 96, 0.5, ids))
  np.testing.assert_array_equal(masks.sum(axis=1), 48)
  x = jnp.ones((len(IDS), 6, 4))
  for impl in randomness.DROPOUT_IMPLS:
    _rows_match(lambda ids, i=impl: randomness.dropout(x[:len(ids)], 0.5, key, ids, i))
  # Other keys draw other bits.
  assert not np.array_equal(randomness.clip_bits(key, IDS, (8, 5)),
                            randomness.clip_bits(jax.random.key(2), IDS, (8, 5)))
  with pytest.raises(ValueError, match="seeds of shape"):
    randomness.clip_bits(key, IDS, (5, 8))
  with pytest.raises(ValueError, match="clip_ids of shape"):
    randomness.default_clip_ids(3, IDS)


def test_hash_dropout_bits_look_independent():
  """Drop rate, neighbours within a clip, the same element across clips, and the xor
  of 2x2 rectangles (which the per-clip xor construction could bias) all behave as
  i.i.d. draws."""
  clips, per_clip = 512, 2048
  bits = np.asarray(randomness.clip_bits(jax.random.key(3), jnp.arange(clips),
                                         (clips, per_clip)), np.uint64)
  n = bits.size
  for k in (0, 7, 15, 23, 31):  # every bit is a fair coin
    assert abs(((bits >> k) & 1).mean() - 0.5) < 5 * 0.5 / np.sqrt(n)
  drops = (bits < round(0.2 * 2**32)).astype(float)
  assert abs(drops.mean() - 0.2) < 5 * np.sqrt(0.16 / n)
  for lag in (1, 16, 96):  # neighbouring decisions within a clip
    r = np.corrcoef(drops[:, :-lag].ravel(), drops[:, lag:].ravel())[0, 1]
    assert abs(r) < 5 / np.sqrt(n)
  r = np.corrcoef(drops[:-1].ravel(), drops[1:].ravel())[0, 1]  # neighbouring clips
  assert abs(r) < 5 / np.sqrt(n)
  rng = np.random.default_rng(0)
  c = rng.choice(clips, (100_000, 2))
  i = rng.choice(per_clip, (100_000, 2))
  ok = (c[:, 0] != c[:, 1]) & (i[:, 0] != i[:, 1])
  c, i = c[ok], i[ok]
  xor = bits[c[:, 0], i[:, 0]] ^ bits[c[:, 0], i[:, 1]] ^ bits[c[:, 1], i[:, 0]] ^ bits[
      c[:, 1], i[:, 1]]
  for k in range(32):
    assert abs(((xor >> k) & 1).mean() - 0.5) < 5 * 0.5 / np.sqrt(len(xor)), k


def test_chunked_encoders_match_the_whole_batch():
  """Train-mode outputs (masks, both dropout impls, the GRU's dropout) per clip are
  the same in chunks of 2 as on the whole batch, up to matmul round-off (the
  batch shape changes XLA:CPU's blocking), and differ for other clip ids."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 96, 64)), jnp.float32)
  tiny = dict(d_model=16, num_layers=1, num_heads=2, mlp_dim=32, mask_rate=0.5)
  for cfg in ({"name": "transformer", **tiny, "dropout_impl": "hash"},
              {"name": "transformer", **tiny, "dropout_impl": "flax"},
              {"name": "gru", "d_model": 8, "num_layers": 2}):
    model = models.build_encoder(cfg)
    params = jax.jit(lambda k, m=model: m.init(k, x, train=False))(jax.random.key(0))

    @jax.jit
    def run(params, x, ids, m=model):
      fn = lambda xc, rngs, i: m.apply(params, xc, train=True, rngs=rngs, clip_ids=i)
      key = jax.random.key(5)
      return (chunking.apply_in_chunks(fn, x, key, 2, ids),
              chunking.apply_in_chunks(fn, x, key, 8, ids))

    chunked, whole = run(params, x, IDS)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=2e-6, err_msg=cfg["name"])
    other, _ = run(params, x, IDS + 1)
    assert np.abs(np.asarray(other) - np.asarray(whole)).max() > 1e-2, cfg


@pytest.fixture(scope="module")
def layouts():
  return conftest.run_script("layout_steps.py", "pretrain", "downstream", devices=4)


@pytest.mark.parametrize("task", ["pretrain", "downstream"])
def test_steps_do_not_depend_on_chunks_or_devices(layouts, task):
  """Chunk sizes 0 / 4 / 16 on 1 and 4 devices. The losses agree to float32
  round-off (<= 1e-6 at losses of ~1-3.5): across devices the pmean adds the
  devices' partial losses in another order, and a chunk's matmuls may round
  differently from the whole batch's (pre-training's loss is bit-identical on one
  device; this downstream batch's moves by one ulp at chunk 4). Gradients agree to
  the same round-off (<= 1e-6). A different mask, dropout or augmentation for any
  clip would move the loss by ~1e-2."""
  runs = layouts[task]
  assert {(r["chunk"], r["devices"]) for r in runs} == {
      (c, d) for c in (0, 4, 16) for d in (1, 4)}
  for r in runs:
    assert np.isfinite(r["loss"])
    if task == "pretrain" and r["devices"] == 1:
      assert r["loss_diff"] == 0.0, r
    assert r["loss_diff"] <= 1e-6, r
    assert r["grad_diff"] <= 1e-6, r


@pytest.mark.parametrize("chunk_size, b, scans", [(0, 8, 0), (16, 8, 0), (4, 8, 1)])
def test_whole_batch_is_one_encoder_call(chunk_size, b, scans):
  """Pre-training encodes both views of its b pairs in one call when the chunk covers
  the 2b clips: no scan (lax.map) in the step's jaxpr; smaller chunks loop."""
  config = pretrain_configs.get_config("transformer_m50,runlocal")
  config.model.chunk_size = chunk_size
  model = pretrain.build_model(config.model)
  params = jax.eval_shape(lambda k: pretrain.init_state(model, config, k).params,
                          jax.random.key(0))
  views = jax.ShapeDtypeStruct((b, 2, 96, 64), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda p, v: pretrain.contrastive_loss_fn(
      model, p, v, jax.random.key(0), train=True, chunk_size=chunk_size, axis_name=None,
      remat=False))(params, views)
  assert str(jaxpr).count("scan[") == scans


def _numpy_ds_mask(rec_key, clip, branch, time, rate):
  """The DS mask as infer.py documents it, in plain numpy (an independent reference:
  what a future JAX version must reproduce)."""
  def fmix32(h):
    h = np.asarray(h, np.uint32)
    with np.errstate(over="ignore"):
      h = h ^ (h >> np.uint32(16))
      h = h * np.uint32(0x85EBCA6B)
      h = h ^ (h >> np.uint32(13))
      h = h * np.uint32(0xC2B2AE35)
      return h ^ (h >> np.uint32(16))

  seed = np.uint32(0)
  for w in (infer.MASK_SEED, rec_key[0], rec_key[1], clip, branch):
    seed = fmix32(seed ^ np.uint32(w))
  noise = fmix32(fmix32(np.arange(time, dtype=np.uint32) + np.uint32(infer.MASK_SEED)) ^ seed)
  masked = np.zeros(time, bool)  # the smallest noise, ties in its top 24 bits by step
  masked[np.argsort(noise >> np.uint32(8), kind="stable")[:round(rate * time)]] = True
  return masked


def test_ds_masks_do_not_depend_on_jax_prng_settings():
  """The inference masks come from the recording digest and the project's counter
  hash, not from jax.random: the same under either `jax_threefry_partitionable`
  (whose default changed in JAX 0.5), and equal to a numpy reference."""
  encoder = models.build_encoder({"name": "transformer", "mask_rate": 0.5,
                                  "mask_at_eval": True})
  feats = np.random.default_rng(0).normal(size=(300, 64)).astype(np.float32)
  rec = mask_key.recording_key(feats, 96)
  # The digest itself is plain BLAKE2b of the documented bytes.
  digest = hashlib.blake2b(np.asarray([300, 64], "<i8").tobytes() + feats.astype("<f4")
                           .tobytes(), digest_size=8).digest()
  np.testing.assert_array_equal(rec, np.frombuffer(digest, "<u4"))
  rec_keys = jnp.asarray(np.stack([rec] * 3 + [rec[::-1]]), jnp.uint32)
  clip_index = jnp.asarray([0, 1, 2, 0], jnp.int32)
  masks = []
  for partitionable in (True, False):
    with jax.threefry_partitionable(partitionable):
      seeds = jax.jit(infer.clip_seeds)(rec_keys, clip_index)
      masks.append([np.asarray(infer.branch_mask(encoder, seeds, 96, b)) for b in (0, 1)])
  np.testing.assert_array_equal(masks[0], masks[1])
  for b in (0, 1):
    for row in range(4):
      want = _numpy_ds_mask(np.asarray(rec_keys[row]), int(clip_index[row]), b, 96, 0.5)
      np.testing.assert_array_equal(masks[0][b][row], want)
  assert not np.array_equal(masks[0][0], masks[0][1])  # branches differ
  assert len({m.tobytes() for m in masks[0][0]}) == 4  # clips and recordings differ
