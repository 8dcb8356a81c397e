"""Tests for the encoders (by name from the registry), heads and ContrastiveModel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import coughjax.models
from coughjax.models import chunking, heads, randomness, transformer

TIME, MEL = 96, 64
TINY = {
    "transformer": dict(d_model=16, num_layers=1, num_heads=2, mlp_dim=32),
    "gru": dict(d_model=8, num_layers=2),
}


def _random_params(model, *args):
  """Parameters of `model` (called on `args`) with random values, without compiling
  its init.

  Compiling is what costs time in these tests (seconds for an init on a busy CPU);
  the shapes come from tracing alone and the values need only be generic.
  """
  shapes = jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a, train=False), *args)
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


@pytest.mark.parametrize("name, extra", [
    ("gru", {}), ("transformer", {"attention_impl": "einsum"}),
    ("transformer", {"attention_impl": "dot_product"})])
def test_bfloat16_computation_float32_params(name, extra, clips):
  model = coughjax.models.build_encoder({"name": name, "dtype": jnp.bfloat16,
                                         **TINY[name], **extra})
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
  # torch nn.GRU's count: W_ih, W_hh [3d, *] and b_ih, b_hh [3d] per layer.
  assert _count(shapes["gru"]) == 2 * (2 * 3 * 64 * 64 + 2 * 3 * 64) == 49920
  layer = shapes["transformer"]["layer_0"]
  assert set(shapes["transformer"]) == {"embed", "layer_0", "layer_1"}
  assert set(layer) == {"attention", "attention_norm", "mlp_in", "mlp_out", "mlp_norm"}
  assert set(layer["attention"]) == {"qkv", "out"}
  assert layer["attention"]["qkv"]["kernel"].shape == (64, 192)
  assert layer["attention"]["out"]["kernel"].shape == (64, 64)


@pytest.mark.parametrize("attention_impl", transformer.ATTENTION_IMPLS)
def test_encoder_layer_matches_pytorch_twin(attention_impl):
  """One layer against torch.nn.TransformerEncoderLayer with the documented mapping.

  in_proj_weight = qkv kernel.T, out_proj/linear1/linear2 weights = kernels.T, norm1/2
  = attention_norm/mlp_norm; a random key mask goes to torch as an additive mask.
  Both attention kernels (CPU einsum, jax.nn.dot_product_attention) share the layout.
  """
  torch = pytest.importorskip("torch")
  d, heads, mlp, time = 16, 2, 32, 12
  x = np.random.default_rng(0).normal(size=(3, time, d)).astype(np.float32)
  masked = coughjax.models.masking.random_key_mask(jax.random.key(0), 3, time, 0.5)
  bias = coughjax.models.masking.attention_bias(coughjax.models.masking.key_bias(masked))
  layer = transformer.EncoderLayer(heads, mlp, dropout=0.2, attention_impl=attention_impl)
  shapes = jax.eval_shape(
      lambda x, m: layer.init(jax.random.key(0), x, m, train=False), x, masked)
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype),
                        shapes)
  h = jax.jit(lambda p, x, m: layer.apply(p, x, m, train=False))(params, x, masked)

  p = jax.tree.map(lambda a: torch.tensor(np.asarray(a)), params["params"])
  twin = torch.nn.TransformerEncoderLayer(d, heads, mlp, dropout=0.2, batch_first=True)
  with torch.no_grad():
    attn = twin.self_attn
    attn.in_proj_weight.copy_(p["attention"]["qkv"]["kernel"].T)
    attn.in_proj_bias.copy_(p["attention"]["qkv"]["bias"])
    attn.out_proj.weight.copy_(p["attention"]["out"]["kernel"].T)
    attn.out_proj.bias.copy_(p["attention"]["out"]["bias"])
    for ours, theirs in (("mlp_in", twin.linear1), ("mlp_out", twin.linear2)):
      theirs.weight.copy_(p[ours]["kernel"].T)
      theirs.bias.copy_(p[ours]["bias"])
    for ours, theirs in (("attention_norm", twin.norm1), ("mlp_norm", twin.norm2)):
      theirs.weight.copy_(p[ours]["scale"])
      theirs.bias.copy_(p[ours]["bias"])
    # torch takes a per-(clip, head) additive mask [N * heads, T, T].
    torch_mask = torch.tensor(np.repeat(np.asarray(bias)[:, 0], heads, axis=0))
    expected = twin.eval()(torch.tensor(x), src_mask=torch_mask).numpy()
  np.testing.assert_allclose(h, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", randomness.DROPOUT_IMPLS)
def test_dropout_rate_scale_and_keys(impl):
  x = jnp.ones((64, 96, 64))
  ids = jnp.arange(64)
  run = jax.jit(lambda k: randomness.dropout(x, 0.2, k, ids, impl))
  a, b = np.asarray(run(jax.random.key(0))), np.asarray(run(jax.random.key(1)))
  assert set(np.unique(a)) == {0.0, 1.25}  # inverted: kept elements scaled by 1 / 0.8
  # 393,216 draws: the drop rate is 0.2 within 5 standard deviations (0.0032).
  assert abs((a == 0).mean() - 0.2) < 0.0032 and abs((b == 0).mean() - 0.2) < 0.0032
  # Independent masks for different keys, identical ones for the same key.
  both = ((a == 0) & (b == 0)).mean()
  assert abs(both - 0.04) < 0.002
  np.testing.assert_array_equal(a, run(jax.random.key(0)))
  assert randomness.dropout(x, 0.0, jax.random.key(0), ids, impl) is x
  np.testing.assert_array_equal(randomness.dropout(x, 1.0, jax.random.key(0), ids, impl), 0)
  with pytest.raises(ValueError, match="unknown dropout_impl 'bernoulli'"):
    randomness.dropout(x, 0.2, jax.random.key(0), ids, "bernoulli")


@pytest.mark.parametrize("masked", [False, True])
def test_attention_impls_agree(masked, clips):
  """The CPU einsum kernel and jax.nn.dot_product_attention (XLA on CPU) give the same
  encoder output and gradients, with and without a key mask."""
  cfg = {"name": "transformer", **TINY["transformer"]}
  mask = (coughjax.models.masking.random_key_mask(jax.random.key(4), 3, TIME, 0.5)
          if masked else None)
  models = {impl: coughjax.models.build_encoder({**cfg, "attention_impl": impl})
            for impl in transformer.ATTENTION_IMPLS}
  params = _random_params(models["einsum"], clips)

  def run(model):
    loss = lambda p: jnp.sum(model.apply(p, clips, train=False, mask=mask) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  (a, ga), (b, gb) = (run(models[impl]) for impl in transformer.ATTENTION_IMPLS)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), ga, gb)
  h = {impl: models[impl].apply(params, clips, train=False, mask=mask) for impl in models}
  np.testing.assert_allclose(h["einsum"], h["dot_product"], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="unknown attention_impl 'flash'"):
    coughjax.models.build_encoder({**cfg, "attention_impl": "flash"}).apply(
        params, clips, train=False)


@pytest.mark.parametrize("impl", randomness.DROPOUT_IMPLS)
def test_layer_dropout_paths_drop_at_the_rate(impl):
  """Both dropout impls route every dropout of a layer (attention output, MLP hidden,
  MLP output) through a per-clip ClipDropout of that impl at the layer's rate."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(0).normal(size=(32, TIME, 16)), jnp.float32)
  seen = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, randomness.ClipDropout) and context.method_name == "__call__":
      assert (context.module.impl, context.module.rate) == (impl, 0.2)
      seen.append((np.asarray(args[0]), np.asarray(out)))
    return out

  layer = transformer.EncoderLayer(2, 32, dropout=0.2, dropout_impl=impl)
  params = _random_params(layer, x, None)
  with nn.intercept_methods(record):
    out = layer.apply(params, x, None, train=True, rngs={"dropout": jax.random.key(1)})
  assert len(seen) == 3 and np.all(np.isfinite(out))
  for before, after in seen:  # attention output, MLP hidden, MLP output
    live = before != 0  # the MLP hidden units after ReLU are often 0 already
    dropped = (after[live] == 0).mean()
    assert abs(dropped - 0.2) < 5 * np.sqrt(0.16 / live.sum())
    kept = live & (after != 0)
    np.testing.assert_allclose(after[kept], before[kept] / 0.8, rtol=1e-6)


def test_gru_backward_pass_with_dropout_matches_autodiff():
  """The GRU's hand-written backward pass equals jax autodiff of a plain layer-by-layer
  scan given the same dropout keep masks (3 layers, so dropout sits between two pairs)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from coughjax.models import gru  # pylint: disable=g-import-not-at-top
  rate, (b, t, d) = 0.3, (4, 10, 8)
  model = coughjax.models.build_encoder({"name": "gru", "d_model": d, "num_layers": 3,
                                         "dropout": rate})
  x = jnp.asarray(np.random.default_rng(0).normal(size=(b, t, 5)), jnp.float32)
  params = _random_params(model, x)
  rngs = {"dropout": jax.random.key(7)}
  # The key the module draws its keep masks from (`make_rng` at the top of the GRU).
  key = nn.apply(lambda m: m.make_rng("dropout"), model)(params, rngs=rngs)
  target = jnp.asarray(np.random.default_rng(1).normal(size=(b, d)), jnp.float32)

  def reference(p):
    h = x.swapaxes(0, 1)
    for i in range(3):
      layer = p["params"][f"layer_{i}"]
      if i:  # clip ids 0..b-1 along axis 1 of [t, b, d]
        keep = randomness.keep_mask(jax.random.fold_in(key, i), jnp.arange(b), h.shape,
                                    rate, axis=1)
        h = jnp.where(keep, h / (1 - rate), 0)

      def step(state, gx, layer=layer):
        state = gru._cell(state, gx, layer["kernel_hh"], layer["bias_hh"])[0]
        return state, state

      _, h = jax.lax.scan(step, jnp.zeros((b, d)),
                          h @ layer["kernel_ih"] + layer["bias_ih"])
    return jnp.sum(h[-1] * target)

  def ours(p):
    return jnp.sum(model.apply(p, x, train=True, rngs=rngs) * target)

  (want, want_grads), (got, got_grads) = (jax.jit(jax.value_and_grad(f))(params)
                                          for f in (reference, ours))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5),
               got_grads, want_grads)
  # Dropout acted: without it the value differs.
  assert abs(float(jnp.sum(model.apply(params, x, train=False) * target)) - float(got)) > 1e-3


def test_gru_bfloat16_returns_float32_master_gradients():
  """Under bf16 compute the GRU's weight gradients are accumulated and returned in
  float32 (finer than bf16's 8 bits of mantissa) and stay close to the float32
  model's; dL/dh is carried in float32."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 24, 5)), jnp.float32)
  cfg = {"name": "gru", "d_model": 8, "num_layers": 2, "dropout": 0.2}
  models = {dt: coughjax.models.build_encoder({**cfg, "dtype": dt})
            for dt in (jnp.float32, jnp.bfloat16)}
  params = _random_params(models[jnp.float32], x)
  target = jnp.asarray(np.random.default_rng(1).normal(size=(16, 8)), jnp.float32)

  def grads(model):
    loss = lambda p: jnp.sum(model.apply(p, x, train=True, rngs={
        "dropout": jax.random.key(3)}).astype(jnp.float32) * target)
    return jax.jit(jax.grad(loss))(params)

  want, got = grads(models[jnp.float32]), grads(models[jnp.bfloat16])
  for a, e in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert a.dtype == jnp.float32
    assert np.linalg.norm(a - e) <= 0.05 * np.linalg.norm(e)
  kernel = np.asarray(got["params"]["layer_1"]["kernel_hh"])
  rounded = np.asarray(jnp.asarray(kernel).astype(jnp.bfloat16).astype(jnp.float32))
  assert np.mean(kernel != rounded) > 0.5  # not bf16 values cast back to float32


def test_gru_forward_mode_and_settings_are_clear_errors():
  x = jnp.zeros((2, 6, 5))
  model = coughjax.models.build_encoder({"name": "gru", "d_model": 4})
  params = _random_params(model, x)
  with pytest.raises(TypeError, match=r"GRU: forward-mode .* not supported.*jax\.grad"):
    jax.jvp(lambda p: model.apply(p, x, train=False), (params,), (params,))
  for field, bad in (("eval_streams", 0), ("eval_unroll", 0), ("eval_streams", "2"),
                     ("num_layers", 0), ("d_model", 2.5), ("eval_unroll", True)):
    bad_model = coughjax.models.build_encoder({"name": "gru", "d_model": 4, field: bad})
    with pytest.raises(ValueError, match=rf"GRU {field} \(config model.gru.{field}\) must"):
      bad_model.apply(params, x, train=False)
  with pytest.raises(ValueError, match=r"GRU dropout \(config model.gru.dropout\)"):
    coughjax.models.build_encoder({"name": "gru", "d_model": 4, "dropout": 1.5}).apply(
        params, x, train=False)


def test_chunked_remat_matches_plain():
  """apply_in_chunks with remat, and on the whole batch: same values and gradients,
  since every chunk draws per-clip dropout from the same stream key."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 5)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)), jnp.float32)
  ids = jnp.arange(8) + 100

  def fn(xc, rngs, ids, w):
    noise = randomness.dropout(jnp.ones((xc.shape[0], 3)), 0.5, rngs["dropout"], ids)
    return jnp.tanh(xc @ w) * noise

  def loss(w, chunk, remat):
    out = chunking.apply_in_chunks(lambda xc, r, i: fn(xc, r, i, w), x, jax.random.key(0),
                                   chunk, ids, remat=remat)
    return jnp.sum(out ** 2)

  (a, ga), (b, gb), (c, gc) = (
      jax.jit(jax.value_and_grad(lambda w, k=k, r=r: loss(w, k, r)))(w)
      for k, r in ((2, False), (2, True), (8, False)))
  np.testing.assert_allclose(a, b, rtol=1e-6)
  np.testing.assert_allclose(a, c, rtol=1e-6)
  np.testing.assert_allclose(ga, gb, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ga, gc, rtol=1e-5, atol=1e-6)


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


def test_apply_in_chunks_passes_keys_and_clip_ids():
  """Every chunk gets the same stream keys and its own rows' clip ids, whether the
  batch runs as one chunk (no lax.map) or in a loop."""
  x = jnp.arange(8.0).reshape(4, 2)
  fn = lambda xc, rngs, ids: xc + randomness.clip_bits(rngs["mask"], ids, xc.shape) % 7
  rng = jax.random.PRNGKey(0)
  ids = jnp.asarray([5, 2, 9, 1])
  whole = chunking.apply_in_chunks(fn, x, rng, 4, ids)
  looped = chunking.apply_in_chunks(fn, x, rng, 1, ids)
  np.testing.assert_array_equal(whole, looped)
  with pytest.raises(ValueError, match="clip_ids of shape"):
    chunking.apply_in_chunks(fn, x, rng, 4, ids[:3])
