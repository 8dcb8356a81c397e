"""Tests for the encoders (by name from the registry), heads and ContrastiveModel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import coughjax.models
from coughjax.models import heads, transformer

TIME, MEL = 96, 64
TINY = {
    "transformer": dict(d_model=16, num_layers=1, num_heads=2, mlp_dim=32),
    "gru": dict(d_model=8, num_layers=2),
}


def _random_params(model, x):
  """Parameters of `model` with random values, without compiling its init.

  Compiling is what costs time in these tests (seconds for an init on a busy CPU);
  the shapes come from tracing alone and the values need only be generic.
  """
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype),
                      shapes)


def _count(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def clips():
  return jnp.asarray(np.random.default_rng(0).normal(size=(3, TIME, MEL)), jnp.float32)


@pytest.mark.parametrize("name", sorted(TINY))
def test_encoder_shapes_and_dropout(name, clips):
  # A flat config may carry other encoders' fields; each encoder takes its own.
  cfg = {"name": name, "mask_rate": 0.5, "proj_dim": 4, **TINY[name]}
  model = coughjax.models.build_encoder(cfg)
  params = _random_params(model, clips)

  @jax.jit
  def run(params, x, key):
    # train=False gets no RNG at all: neither dropout nor masking may draw one.
    rngs = {"dropout": key, "mask": jax.random.fold_in(key, 1)}
    return (model.apply(params, x, train=False),
            model.apply(params, x, train=True, rngs=rngs))

  h, a = run(params, clips, jax.random.key(1))
  h2, b = run(params, clips, jax.random.key(2))
  assert h.shape == a.shape == (3, TINY[name]["d_model"]) and h.dtype == jnp.float32
  np.testing.assert_array_equal(h, h2)
  assert not np.allclose(a, b)


@pytest.mark.parametrize("name", sorted(TINY))
def test_bfloat16_computation_float32_params(name, clips):
  model = coughjax.models.build_encoder({"name": name, "dtype": jnp.bfloat16,
                                         **TINY[name]})
  params = _random_params(model, clips)
  assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  h = jax.jit(lambda p, x: model.apply(p, x, train=False))(params, clips)
  assert h.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(h, np.float32)))


def test_parameter_counts_and_transformer_tree():
  """d = 64 defaults; the tree names are what a PyTorch twin maps onto."""
  x = jax.ShapeDtypeStruct((1, TIME, MEL), jnp.float32)
  shapes = {}
  for name in ("transformer", "gru"):
    model = coughjax.models.build_encoder({"name": name})
    shapes[name] = jax.eval_shape(
        lambda x, m=model: m.init(jax.random.key(0), x, train=False), x)["params"]
  # embed 64*64+64; per layer: q,k,v,out 4*(64*64+64), 2 LayerNorms 4*64,
  # MLP 64*256+256 + 256*64+64.
  assert _count(shapes["transformer"]) == 4160 + 2 * (16640 + 256 + 33088) == 104128
  # Per layer: 3 input Dense with bias, 3 hidden Dense of which only hn has a bias.
  assert _count(shapes["gru"]) == 2 * (3 * (64 * 64 + 64) + 3 * 64 * 64 + 64) == 49664
  layer = shapes["transformer"]["layer_0"]
  assert set(shapes["transformer"]) == {"embed", "layer_0", "layer_1"}
  assert set(layer) == {"attention", "attention_norm", "mlp_in", "mlp_out", "mlp_norm"}
  assert set(layer["attention"]) == {"query", "key", "value", "out"}
  assert layer["attention"]["query"]["kernel"].shape == (64, 4, 16)


def test_unknown_pooling_and_rate(clips):
  for bad in ({"pooling": "median"}, {"mask_rate": 1.5}):
    model = coughjax.models.build_encoder({"name": "transformer", **TINY["transformer"],
                                           **bad})
    with pytest.raises(ValueError, match="pooling|mask rate"):
      jax.eval_shape(lambda x, m=model: m.init(jax.random.key(0), x, train=False),
                     clips)


def test_unknown_encoder():
  with pytest.raises(ValueError, match="unknown encoder"):
    coughjax.models.build_encoder({"name": "lstm"})


@pytest.fixture(scope="module")
def contrastive(clips):
  # The smallest encoder: compiling the real init is this file's costliest step.
  encoder = coughjax.models.build_encoder({"name": "gru", "d_model": 8, "num_layers": 1})
  model = heads.ContrastiveModel(encoder, proj_dim=4)
  return model, heads.init_contrastive(model, jax.random.key(0), clips.shape)


def _project_and_score(model, params, clips):
  """z of the clips, rows = [z; 0], and the logits of rows against z."""

  @jax.jit
  def run(params, x):
    z = model.apply({"params": params}, x, train=False)
    # A zero projection must not make cosine NaN.
    rows = jnp.concatenate([z, jnp.zeros((1, z.shape[1]))])
    return z, rows, model.apply({"params": params}, rows, z,
                                method=heads.ContrastiveModel.logits)

  return run(params, clips)


def test_contrastive_init_covers_similarity(contrastive, clips):
  model, params = contrastive
  assert set(params) == {"encoder", "head", "similarity"}
  assert params["similarity"]["bilinear"].shape == (4, 4)
  z, rows, logits = _project_and_score(model, params, clips)
  assert z.shape == (3, 4) and z.dtype == jnp.float32 and logits.shape == (4, 3)
  w = params["similarity"]["bilinear"]
  np.testing.assert_allclose(logits, rows @ w @ z.T, rtol=1e-5, atol=1e-7)


def test_cosine_similarity(contrastive, clips):
  model, params = contrastive
  tau = heads.default_temperature("cosine")
  assert tau == 0.2 and heads.default_temperature("bilinear") == 1.0
  cosine = heads.ContrastiveModel(model.encoder, proj_dim=4, similarity="cosine",
                                  temperature=tau)
  # Shapes only: the compiled init is covered by the `contrastive` fixture.
  shapes = jax.eval_shape(
      lambda k: heads.init_contrastive(cosine, k, clips.shape), jax.random.key(0))
  assert set(shapes) == {"encoder", "head"}
  params = {k: params[k] for k in shapes}
  z, _, logits = _project_and_score(cosine, params, clips)
  logits = np.asarray(logits)
  assert logits.shape == (4, 3)
  assert np.all(np.abs(logits) <= 1 / tau + 1e-5)
  zn = np.asarray(z) / np.linalg.norm(z, axis=1, keepdims=True)
  np.testing.assert_allclose(logits[:3], zn @ zn.T / tau, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(logits[3], 0.0)


def test_similarity_errors():
  rows = jnp.ones((2, 4))
  with pytest.raises(ValueError, match="unknown similarity"):
    heads.default_temperature("dot")
  with pytest.raises(ValueError, match="unknown similarity"):
    heads.Similarity("dot").init(jax.random.key(0), rows, rows)
  with pytest.raises(ValueError, match="temperature"):
    heads.Similarity("cosine", 0.0).init(jax.random.key(0), rows, rows)


def test_projection_head_range():
  head = heads.ProjectionHead(3)
  z, _ = jax.jit(lambda x: head.init_with_output(jax.random.key(0), x))(
      jnp.asarray(np.random.default_rng(0).normal(size=(2, 5)) * 10, jnp.float32))
  assert z.shape == (2, 3) and np.all(np.abs(np.asarray(z)) < 1)


def test_sinusoidal_positions():
  table = transformer.sinusoidal_positions(5, 6)
  for p in range(5):
    for i in range(3):
      angle = p / 10_000 ** (2 * i / 6)
      np.testing.assert_allclose(table[p, 2 * i:2 * i + 2], [np.sin(angle), np.cos(angle)],
                                 rtol=1e-6, atol=1e-7)
