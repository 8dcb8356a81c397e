"""Tests for random key masking and its use in the Transformer encoder."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coughjax.models import masking
from coughjax.models.transformer import Transformer

RATES = (0.0, 0.25, 0.5, 0.75, 1.0)
TIME, MEL = 96, 64


def _tiny(**kw):
  cfg = dict(d_model=16, num_layers=1, num_heads=2, mlp_dim=32)
  return Transformer(**{**cfg, **kw})


@pytest.fixture(scope="module")
def clips():
  return jnp.asarray(np.random.default_rng(0).normal(size=(2, TIME, MEL)), jnp.float32)


@pytest.fixture(scope="module")
def params(clips):
  """Random parameters of `_tiny()` from its traced shapes (compiling init is slow)."""
  shapes = jax.eval_shape(lambda x: _tiny().init(jax.random.key(0), x, train=False),
                          clips)
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype),
                      shapes)


@pytest.mark.parametrize("rate", RATES)
def test_exact_count_per_clip(rate):
  masked = np.asarray(masking.random_key_mask(jax.random.key(3), 16, TIME, rate))
  assert masked.dtype == bool and masked.shape == (16, TIME)
  np.testing.assert_array_equal(masked.sum(axis=1), round(rate * TIME))


def test_masked_steps_vary_between_rows_and_keys():
  a = np.asarray(masking.random_key_mask(jax.random.key(0), 8, TIME, 0.5))
  b = np.asarray(masking.random_key_mask(jax.random.key(1), 8, TIME, 0.5))
  assert len({r.tobytes() for r in a}) == 8
  assert not np.array_equal(a, b)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), "half"])
def test_invalid_rate(rate):
  with pytest.raises(ValueError, match="mask rate"):
    masking.random_key_mask(jax.random.key(0), 2, TIME, rate)


@pytest.mark.parametrize("rate", RATES)
def test_lowest_masks_the_smallest_keys_exactly(rate):
  """Exactly round(rate * T) per row: the smallest noise, ties in the top 24 bits (all
  ties here: values below 256 share them) going to the earlier step, as a stable
  argsort of the noise's top bits."""
  rng = np.random.default_rng(5)
  for noise in (rng.integers(0, 2**32, size=(6, TIME), dtype=np.uint64).astype(np.uint32),
                rng.integers(0, 4, size=(6, TIME)).astype(np.uint32)):
    got = np.asarray(masking.lowest(jnp.asarray(noise), rate))
    count = round(rate * TIME)
    order = np.argsort(noise >> 8, axis=-1, kind="stable")[:, :count]
    want = np.zeros_like(got)
    np.put_along_axis(want, order, True, axis=-1)
    np.testing.assert_array_equal(got, want)


def test_attention_bias_is_the_mask_as_logits():
  masked = jnp.asarray(np.random.default_rng(4).random((3, 12)) < 0.4)
  keys = np.asarray(masking.key_bias(masked))
  assert keys.shape == (3, 1, 1, 12) and keys.dtype == np.float32
  np.testing.assert_array_equal(np.isneginf(keys[:, 0, 0]), masked)
  bias = np.asarray(masking.attention_bias(jnp.asarray(keys)))
  allowed = np.asarray(masking.attention_mask(masked))
  assert bias.shape == (3, 1, 12, 12) and bias.dtype == np.float32
  np.testing.assert_array_equal(bias == 0, allowed)
  np.testing.assert_array_equal(np.isneginf(bias), ~allowed)


def test_attention_mask_rule():
  masked = np.random.default_rng(4).random((3, 12)) < 0.4
  allowed = np.asarray(masking.attention_mask(jnp.asarray(masked)))
  assert allowed.shape == (3, 1, 12, 12)
  for b in range(3):
    for q in range(12):
      for k in range(12):
        assert allowed[b, 0, q, k] == ((not masked[b, k]) or q == k)


def test_attention_mask_full_rate_is_self_only():
  allowed = np.asarray(masking.attention_mask(jnp.ones((3, 12), bool)))
  np.testing.assert_array_equal(allowed[:, 0], np.broadcast_to(np.eye(12, dtype=bool),
                                                               (3, 12, 12)))


def test_mask_cost_independent_of_rate():
  """The traced program is the same for every rate; only two constants differ: the
  index of the k-th smallest key and whether k > 0."""
  texts = set()
  for rate in RATES:
    jaxpr = jax.make_jaxpr(
        lambda k, r=rate: masking.random_key_mask(k, 4, TIME, r))(jax.random.key(0))
    count = round(rate * TIME)
    # dynamic_slice's start (row 0, column k - 1) and the k > 0 flag.
    index, flag = f" 0:i32[] {max(count, 1) - 1}:i32[]", f" {count > 0}:bool[]"
    text = str(jaxpr)
    assert text.count(index) == 1 and text.count(flag) == 1, text
    texts.add(text.replace(index, " INDEX").replace(flag, " FLAG"))
  assert len(texts) == 1


@pytest.mark.parametrize("train,mask_at_eval", [(True, False), (False, True)])
def test_full_rate_is_finite_and_attends_to_self_only(clips, params, train, mask_at_eval):
  model = _tiny(mask_rate=1.0, mask_at_eval=mask_at_eval, pooling="first", dropout=0.0)
  # Step 0 sees only itself, so changing frames 1.. cannot change its output.
  other = clips.at[:, 1:].set(-clips[:, 1:])

  @jax.jit
  def run(params, key):
    f = lambda x: model.apply(params, x, train=train, rngs={"mask": key})
    return f(clips), f(other)

  h, h_other = run(params, jax.random.key(6))
  assert np.all(np.isfinite(np.asarray(h)))
  np.testing.assert_allclose(h_other, h, rtol=1e-5, atol=1e-6)


def test_mask_key_controls_output(clips, params):
  model = _tiny(mask_rate=0.5, mask_at_eval=True)
  run = jax.jit(lambda p, k: model.apply(p, clips, train=False, rngs={"mask": k}))
  same = [np.asarray(run(params, jax.random.key(8))) for _ in range(2)]
  np.testing.assert_array_equal(*same)
  assert not np.allclose(same[0], run(params, jax.random.key(9)))


def test_mask_at_eval_off_and_explicit_mask(clips, params):
  model = _tiny(mask_rate=0.5)
  half = masking.random_key_mask(jax.random.key(10), 2, TIME, 0.5)

  @jax.jit
  def run(params, half):
    f = functools.partial(model.apply, params, clips, train=False)
    # No 'mask' RNG anywhere: at eval without mask_at_eval nothing is drawn, and a
    # passed mask is used as given.
    return (f(), _tiny().apply(params, clips, train=False),
            f(mask=jnp.zeros((2, TIME), bool)), f(mask=half))

  default, unmasked, all_kept, masked = run(params, half)
  np.testing.assert_array_equal(default, unmasked)
  np.testing.assert_allclose(all_kept, unmasked, rtol=1e-6, atol=1e-7)
  assert not np.allclose(masked, unmasked)
  with pytest.raises(ValueError, match="mask shape"):
    jax.eval_shape(lambda p: model.apply(p, clips, train=False, mask=half[:, :10]),
                   params)
