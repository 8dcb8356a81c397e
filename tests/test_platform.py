"""Platform defaults: "auto" chunking, remat and kernels per backend, and config pins.

The accelerator side runs on CPU by making `jax.default_backend()` answer "gpu" or
"tpu": what "auto" resolves to is then the accelerator's choice, and the steps run
its code path (whole-batch encoder, jax.nn.dot_product_attention, flax dropout).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import downstream as downstream_configs
from configs import pretrain as pretrain_configs
from coughjax import models
from coughjax.models import chunking
from coughjax.models import gru as gru_lib
from coughjax.models import platform
from coughjax.models import transformer
from coughjax.train import downstream
from coughjax.train import mesh as mesh_lib
from coughjax.train import pretrain


@pytest.fixture
def backend(request, monkeypatch):
  """Makes jax.default_backend() report `request.param` (the tests still run on CPU)."""
  monkeypatch.setattr(jax, "default_backend", lambda: request.param)
  return request.param


def test_auto_resolves_per_platform():
  assert chunking.resolve_chunk_size("auto", "cpu") == platform.CPU_DEFAULT.train_chunk == 16
  assert chunking.resolve_remat("auto", "cpu") is True
  assert transformer.resolve_attention_impl("auto", "cpu") == "einsum"
  assert transformer.resolve_dropout_impl("auto", "cpu") == "hash"
  assert platform.resolve_setting("auto", "runs", platform="cpu") == "map"
  assert platform.resolve_setting("vmap", "runs", platform="cpu") == "vmap"
  for accelerator in ("gpu", "tpu"):
    assert platform.resolve_setting("auto", "runs", platform=accelerator) == "vmap"
    assert chunking.resolve_chunk_size("auto", accelerator) == 0  # the whole batch
    assert chunking.resolve_remat("auto", accelerator) is False
    assert transformer.resolve_attention_impl("auto", accelerator) == "dot_product"
    assert transformer.resolve_dropout_impl("auto", accelerator) == "flax"


@pytest.mark.parametrize("backend, rows", [("cpu", 16), ("gpu", 1024), ("tpu", 1024)],
                         indirect=["backend"])
def test_auto_follows_the_default_backend(backend, rows):
  assert chunking.chunk_size_for(1024, "auto") == rows
  assert chunking.resolve_remat("auto") is (backend == "cpu")
  assert transformer.resolve_attention_impl("auto") == (
      "einsum" if backend == "cpu" else "dot_product")


def test_explicit_values_pin():
  assert chunking.resolve_chunk_size(64, "gpu") == 64
  assert chunking.resolve_chunk_size(0, "cpu") == 0
  assert chunking.chunk_size_for(96, np.int64(40)) == 32  # largest divisor <= 40
  assert chunking.resolve_remat(False, "cpu") is False
  assert chunking.resolve_remat(True, "tpu") is True
  assert transformer.resolve_attention_impl("einsum", "gpu") == "einsum"
  assert transformer.resolve_dropout_impl("flax", "cpu") == "flax"
  for bad in (-1, "16", 2.0, True):
    with pytest.raises(ValueError, match="model.chunk_size must be"):
      chunking.resolve_chunk_size(bad, "cpu")
  with pytest.raises(ValueError, match="model.remat must be"):
    chunking.resolve_remat("yes", "cpu")
  with pytest.raises(ValueError, match="unknown dropout_impl 'bernoulli'"):
    transformer.resolve_dropout_impl("bernoulli", "gpu")


def test_configs_default_to_auto_and_take_pins():
  for config in (pretrain_configs.get_config("transformer_m50"),
                 pretrain_configs.get_config("gru,runlocal"),
                 downstream_configs.get_config("ensemble,runlocal")):
    m = config.model
    assert (m.chunk_size, m.remat, m.attention_impl, m.dropout_impl) == ("auto",) * 4
  assert downstream_configs.get_config("ens_vggish_transformer").model.chunk_size == "auto"
  # A locked config takes an int or a bool where "auto" was (as --config.model.* does).
  config = pretrain_configs.get_config("transformer_m50")
  config.lock()
  config.model.chunk_size = 256
  config.model.remat = True
  assert chunking.resolve_chunk_size(config.model.chunk_size, "gpu") == 256
  assert chunking.resolve_remat(config.model.remat, "gpu") is True


def _count_dot_product_attention(monkeypatch) -> list[int]:
  """Counts traced calls of jax.nn.dot_product_attention (the accelerator kernel)."""
  calls = [0]
  original = jax.nn.dot_product_attention

  def counted(*args, **kwargs):
    calls[0] += 1
    return original(*args, **kwargs)

  monkeypatch.setattr(jax.nn, "dot_product_attention", counted)
  return calls


def _views(config, seed=0):
  shape = (config.batch_size, 2, config.features.clip_frames, config.features.nfilt)
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _pretrain_step(config, views):
  """(eval loss, train loss, step) of one eval and one train step from init."""
  mesh = mesh_lib.data_mesh(jax.devices()[:1])
  model = pretrain.build_model(config.model)
  train_step, eval_step = pretrain.make_steps(model, config, mesh)
  state = mesh_lib.put_replicated(mesh, pretrain.init_state(model, config,
                                                            jax.random.PRNGKey(0)))
  rng = mesh_lib.put_replicated(mesh, jax.random.PRNGKey(1))
  eval_loss = float(eval_step(state, views, rng)["loss"])
  state, metrics = train_step(state, views, rng)
  return eval_loss, float(metrics["loss"]), int(state.step)


def test_pretrain_runlocal_step_on_cpu_and_accelerator_paths(monkeypatch):
  """The runlocal config, "auto" everywhere, steps on both platforms' code paths: 16-clip
  chunks of the 32 clips on CPU, one call on the accelerator. Masks are per clip, so
  the eval losses (no dropout) agree across the two layouts and attention kernels."""
  config = pretrain_configs.get_config("transformer_m50,runlocal")
  config.lock()
  views = _views(config)
  eval_losses = []
  calls = _count_dot_product_attention(monkeypatch)
  for backend in ("cpu", "gpu"):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    calls[0] = 0
    eval_loss, train_loss, step = _pretrain_step(config, views)
    assert np.isfinite(eval_loss) and np.isfinite(train_loss) and step == 1
    assert (calls[0] > 0) == (backend != "cpu")  # the kernel "auto" picks was traced
    eval_losses.append(eval_loss)
  np.testing.assert_allclose(eval_losses[0], eval_losses[1], rtol=1e-5)


def test_downstream_runlocal_step_on_cpu_and_accelerator_paths(monkeypatch):
  """Same for the downstream classifier: a train step, and predictions that agree,
  also with a pinned chunk size (4 chunks per batch: the lax.map path, which the
  runlocal batch of 16 no longer takes by default)."""
  x = None
  all_probs = []
  calls = _count_dot_product_attention(monkeypatch)
  for backend, chunk_size in (("cpu", "auto"), ("gpu", "auto"), ("cpu", 4)):
    config = downstream_configs.get_config("transformer,runlocal")
    config.model.chunk_size = chunk_size
    config.lock()
    if x is None:
      x = _views(config)[:, 0]  # [b, T, mel]
      y = jnp.asarray(np.arange(config.batch_size) % 2, jnp.float32)
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    calls[0] = 0
    setup = downstream.Setup.create(config)
    state = mesh_lib.put_replicated(setup.mesh,
                                    setup.init_state(config, jax.random.PRNGKey(0)))
    rng = mesh_lib.put_replicated(setup.mesh, jax.random.PRNGKey(1))
    b = config.batch_size
    rec_keys = np.zeros((b, 2), np.uint32)
    rec_keys[:, 0] = np.arange(b)
    probs = np.asarray(setup.predict_step(state, x, rec_keys, np.zeros(b, np.int32)))
    state, metrics = setup.train_step(state, {"x": x, "y": y}, rng)
    assert probs.shape == (config.batch_size,) and np.all((probs > 0) & (probs < 1))
    assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1
    assert (calls[0] > 0) == (backend != "cpu")
    all_probs.append(probs)
  for probs in all_probs[1:]:
    np.testing.assert_allclose(probs, all_probs[0], rtol=1e-5, atol=1e-6)


def test_cpu_preferences_live_in_one_registry():
  """Per-encoder CPU preferences come from `platform.settings` by registered name,
  not from attributes of the model classes; an accelerator gets one setting for all."""
  for name in models.names():
    cls = models.encoder_class(name)
    assert not [a for a in vars(cls) if a.startswith("CPU_")], name
    assert models.registered_name(models.build_encoder({"name": name})) == name
  assert platform.settings("gru", "cpu") == platform.Settings(
      train_chunk=0, inference_chunk=256, scan_streams=2, scan_unroll=4,
      attention="einsum", dropout="hash", runs="map")
  assert platform.settings("vggish", "cpu").train_chunk == 0
  assert platform.settings("vggish", "cpu").runs == "vmap"  # lax.map slows its convs
  assert platform.settings("transformer", "cpu") == platform.CPU_DEFAULT
  for name in models.names():
    assert platform.settings(name, "gpu") == platform.ACCELERATOR
  with pytest.raises(ValueError, match="not a registered encoder"):
    models.registered_name(transformer.EncoderLayer(2, 4, 0.0))


def test_auto_chunks_follow_the_encoders():
  """"auto" chunks ask the encoders on CPU. Training: the whole batch without remat if
  any encoder asks for it (GRU, VGGish), else the smallest. Inference: the smallest
  preference. The whole batch on an accelerator; an int pins it."""
  gru, tfm, vgg = (models.build_encoder({"name": n}) for n in ("gru", "transformer", "vggish"))
  default = platform.CPU_DEFAULT.inference_chunk
  assert chunking.inference_chunk_size("auto", (gru,), "cpu") == 256
  assert chunking.inference_chunk_size("auto", (tfm,), "cpu") == default == 16
  assert chunking.inference_chunk_size("auto", (gru, tfm), "cpu") == default
  assert chunking.inference_chunk_size("auto", (vgg,), "cpu") == default
  assert chunking.inference_chunk_size("auto", (gru,), "gpu") == 0
  assert chunking.inference_chunk_size(32, (gru,), "cpu") == 32
  with pytest.raises(ValueError, match="model.eval_chunk_size must be"):
    chunking.inference_chunk_size("16", (gru,), "cpu")
  for encoders, chunk in (((tfm,), 16), ((gru,), 0), ((vgg, tfm), 0), ((tfm, gru), 0), ((), 16)):
    assert chunking.resolve_chunk_size("auto", "cpu", encoders=encoders) == chunk, encoders
    assert chunking.resolve_remat("auto", "cpu", encoders=encoders) is (chunk > 0), encoders
    assert chunking.resolve_chunk_size("auto", "gpu", encoders=encoders) == 0
    assert chunking.resolve_remat("auto", "gpu", encoders=encoders) is False
  assert chunking.chunk_size_for(1024, "auto", (gru,)) == 1024
  assert chunking.resolve_chunk_size(8, "cpu", encoders=(gru,)) == 8
  assert chunking.resolve_remat(True, "cpu", encoders=(gru,)) is True


@pytest.mark.parametrize("backend", ["cpu", "gpu"], indirect=True)
def test_gru_inference_scan_settings_keep_the_outputs(backend):
  """The GRU's inference scan (2 streams, 4 steps per iteration on CPU; odd batches in
  one stream) gives the plain scan's outputs; a train step runs the plain scan."""
  x = jax.random.normal(jax.random.key(0), (6, 96, 64))
  plain = gru_lib.GRU(eval_unroll=1, eval_streams=1)
  params = plain.init(jax.random.key(1), x, train=False)
  want = plain.apply(params, x, train=False)
  auto = str(jax.make_jaxpr(lambda p: gru_lib.GRU().apply(p, x, train=False))(params))
  assert ("unroll=4" in auto) == (backend == "cpu")
  for unroll, streams in (("auto", "auto"), (3, 2), (1, 4), (2, 3)):
    got = gru_lib.GRU(eval_unroll=unroll, eval_streams=streams).apply(params, x, train=False)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"{unroll}, {streams}")
  tuned = gru_lib.GRU(eval_unroll=4, eval_streams=2)
  jaxpr = str(jax.make_jaxpr(lambda p: tuned.apply(
      p, x, train=True, rngs={"dropout": jax.random.key(2)}))(params))
  assert "unroll=1" in jaxpr and "unroll=4" not in jaxpr


def test_runs_impl_auto_follows_the_encoders():
  from coughjax.train import many  # pylint: disable=g-import-not-at-top
  gru, vggish = (models.build_encoder({"name": n}) for n in ("gru", "vggish"))
  assert many.resolve_runs_impl("auto", [gru]) == "map"  # CPU: bit-identical to alone
  assert many.resolve_runs_impl("auto", [gru, vggish]) == "vmap"
  assert many.resolve_runs_impl("map", [vggish]) == "map"  # a pin is kept
