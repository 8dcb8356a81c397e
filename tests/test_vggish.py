"""VGGish encoder and PyTorch weight conversion, checked against a PyTorch twin."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coughjax.models import build_encoder
from coughjax.models import vggish
from coughjax.models import vggish_convert

NUM_PARAMS = 72_141_184


def _torch_vggish(fc_block: str = "fc", flatten_order: str = "nhwc", seed: int = 0):
  """A PyTorch VGGish with the public ports' layout and key names, random weights.

  Weights are He-normal with small random biases so activations stay O(1) through
  all nine layers: with PyTorch's default init they shrink ~1000x and a comparison
  at 1e-4 would pass for almost any conversion.
  """
  torch = pytest.importorskip("torch")
  nn = torch.nn

  class TorchVGGish(nn.Module):

    def __init__(self):
      super().__init__()
      layers, channels = [], 1
      for _, out, pool in vggish.CONV_LAYERS:
        layers += [nn.Conv2d(channels, out, 3, stride=1, padding=1), nn.ReLU()]
        layers += [nn.MaxPool2d(2, stride=2)] if pool else []
        channels = out
      self.features = nn.Sequential(*layers)
      setattr(self, fc_block, nn.Sequential(
          nn.Linear(512 * 6 * 4, 4096), nn.ReLU(),
          nn.Linear(4096, 4096), nn.ReLU(),
          nn.Linear(4096, 128), nn.ReLU()))

    def forward(self, x):  # x: [B, 1, 96, 64]
      x = self.features(x)  # [B, 512, 6, 4]
      if flatten_order == "nhwc":
        x = x.permute(0, 2, 3, 1)
      return getattr(self, fc_block)(x.reshape(x.shape[0], -1))

  torch.manual_seed(seed)
  model = TorchVGGish().eval()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.normal_(m.bias, std=0.05)
  return model


@pytest.fixture(scope="module")
def torch_twin():
  return _torch_vggish()


def _zero_state_dict(fc_block: str = "fc") -> dict[str, np.ndarray]:
  """Zero weights of the right shapes: 72M random floats would cost seconds per test."""
  abstract = vggish.abstract_params()
  return {k: np.zeros(vggish_convert._torch_shape(abstract[name][leaf].shape),
                      np.float32)
          for k, (name, leaf) in vggish_convert.torch_key_map(fc_block).items()}


def test_key_map_matches_torch_twin(torch_twin):
  shapes = {k: tuple(v.shape) for k, v in torch_twin.state_dict().items()}
  assert shapes == {k: v.shape for k, v in _zero_state_dict().items()}
  assert shapes["features.0.weight"] == (64, 1, 3, 3)
  assert shapes["features.13.weight"] == (512, 512, 3, 3)
  assert shapes["fc.0.weight"] == (4096, 12288)
  assert shapes["fc.4.bias"] == (128,)
  embeddings = vggish_convert.torch_key_map("embeddings")
  assert embeddings == {k.replace("fc.", "embeddings.", 1): v
                        for k, v in vggish_convert.torch_key_map("fc").items()}


def test_matches_pytorch_port(torch_twin):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(1).standard_normal((4, 96, 64), dtype=np.float32)
  with torch.no_grad():
    expected = torch_twin(torch.from_numpy(x)[:, None]).numpy()  # [B, 1, 96, 64]
  params = vggish_convert.convert_state_dict(torch_twin.state_dict())
  assert sum(v.size for v in jax.tree.leaves(params)) == NUM_PARAMS
  # A mask is accepted and ignored: the result must still equal the unmasked twin.
  got = vggish.VGGish().apply({"params": params}, jnp.asarray(x), train=False,
                              mask=jnp.ones((4, 96), bool))
  assert got.shape == (4, 128) and got.dtype == jnp.float32
  assert expected.std() > 0.1 and (expected > 0).mean() > 0.2  # A non-trivial test.
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("flatten_order", ["nhwc", "nchw"])
def test_first_fc_flatten_order(flatten_order):
  """fc1_1's rows must follow VGGish's (h, w, c) flatten whatever the checkpoint's."""
  state = _zero_state_dict()
  # Each input column of the torch weight holds its own index in the torch flatten.
  state["fc.0.weight"] = np.broadcast_to(np.arange(12288, dtype=np.float32),
                                         (4096, 12288))
  kernel = vggish_convert.convert_state_dict(
      state, flatten_order=flatten_order)["fc1_1"]["kernel"]
  h, w, c = np.meshgrid(np.arange(6), np.arange(4), np.arange(512), indexing="ij")
  torch_index = h * 4 * 512 + w * 512 + c if flatten_order == "nhwc" else c * 24 + h * 4 + w
  np.testing.assert_array_equal(kernel[:, 0], torch_index.reshape(-1))
  np.testing.assert_array_equal(kernel[:, 4095], torch_index.reshape(-1))


def test_unknown_flatten_order():
  with pytest.raises(ValueError, match="flatten_order"):
    vggish_convert.convert_state_dict(_zero_state_dict(), flatten_order="nwhc")


def test_layouts():
  rng = np.random.default_rng(0)
  state = _zero_state_dict("embeddings")
  for key in ("features.3.weight", "embeddings.4.weight", "features.13.bias"):
    state[key] = rng.standard_normal(state[key].shape, dtype=np.float32)
  params = vggish_convert.convert_state_dict(state)
  np.testing.assert_array_equal(params["conv2"]["kernel"][1, 2, 5, 7],
                                state["features.3.weight"][7, 5, 1, 2])
  np.testing.assert_array_equal(params["fc2"]["kernel"], state["embeddings.4.weight"].T)
  np.testing.assert_array_equal(params["conv4_2"]["bias"], state["features.13.bias"])
  assert params["fc1_1"]["kernel"].flags.c_contiguous


def test_wrappers_and_ignored_keys():
  state = _zero_state_dict("embeddings")
  state["features.0.bias"] = np.arange(64, dtype=np.float32)
  wrapped = {f"module.{k}": v for k, v in state.items()}
  wrapped["module.pproc.pca_matrix"] = np.eye(128, dtype=np.float32)
  wrapped["module.pproc.pca_means"] = np.zeros((128, 1), np.float32)
  params = vggish_convert.convert_state_dict(wrapped)
  np.testing.assert_array_equal(params["conv1"]["bias"], state["features.0.bias"])


def test_bad_keys_are_listed():
  state = _zero_state_dict()
  del state["features.8.bias"]
  state["fc.6.weight"] = np.zeros((1,), np.float32)
  with pytest.raises(ValueError, match=r"missing keys \['features.8.bias'\].*"
                                       r"unexpected keys \['fc.6.weight'\]"):
    vggish_convert.convert_state_dict(state)
  mixed = _zero_state_dict()
  mixed["embeddings.0.bias"] = mixed.pop("fc.0.bias")
  with pytest.raises(ValueError, match="missing keys.*unexpected keys"):
    vggish_convert.convert_state_dict(mixed)


def test_bad_shape_names_key():
  state = _zero_state_dict()
  state["features.6.weight"] = np.zeros((256, 128, 5, 5), np.float32)
  with pytest.raises(ValueError, match=r"features.6.weight: expected shape "
                                       r"\(256, 128, 3, 3\).*got \(256, 128, 5, 5\)"):
    vggish_convert.convert_state_dict(state)
  state = _zero_state_dict()
  state["fc.4.weight"] = np.zeros((64, 4096), np.float32)
  with pytest.raises(ValueError, match=r"fc.4.weight: expected shape \(128, 4096\)"):
    vggish_convert.convert_state_dict(state)


def test_build_encoder_and_shapes():
  model = build_encoder({"name": "vggish", "dropout": 0.5, "dtype": jnp.bfloat16,
                         "d_model": 64})  # d_model belongs to other encoders.
  assert isinstance(model, vggish.VGGish) and model.dropout == 0.5
  x = jax.ShapeDtypeStruct((3, 96, 64), jnp.float32)
  out, _ = jax.eval_shape(
      lambda x: model.init_with_output({"params": jax.random.key(0),
                                        "dropout": jax.random.key(1)}, x, train=True), x)
  assert out.shape == (3, 128) and out.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match=r"\[batch, 96, 64\].*\(3, 100, 64\)"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((3, 100, 64)),
                                      train=False))


def test_cli_and_orbax_round_trip(tmp_path, monkeypatch):
  torch = pytest.importorskip("torch")
  state = _zero_state_dict()
  # Distinct small layers show that every leaf lands where it belongs; the big ones
  # stay zero so that the 288 MB of weights compress and the test stays fast.
  for i, key in enumerate(k for k in state if state[k].size < 300_000):
    state[key] = np.full(state[key].shape, i + 1.0, np.float32)
  pth = tmp_path / "vggish.pth"
  pth.touch()
  # Wrapped as training scripts save it. torch.save/load of 288 MB would dominate the
  # test, so torch.load is stubbed here; a real file is read in the next test.
  monkeypatch.setattr(torch, "load", lambda *a, **kw: {
      "state_dict": {k: torch.from_numpy(v) for k, v in state.items()}, "epoch": 3})
  out = tmp_path / "flax"
  vggish_convert.main(["--input", str(pth), "--output", str(out)])
  restored = vggish_convert.load_flax_params(out)
  expected = vggish_convert.convert_state_dict(state)
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(got), want)


def test_load_pytorch_checkpoint_errors(tmp_path):
  torch = pytest.importorskip("torch")
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    vggish_convert.load_pytorch_checkpoint(tmp_path / "missing.pth")
  bad = tmp_path / "bad.pth"
  torch.save({"features.0.weight": torch.zeros(64, 1, 3, 3)}, bad)
  with pytest.raises(ValueError, match=r"bad.pth: .*missing keys"):
    vggish_convert.load_pytorch_checkpoint(bad)


def test_missing_torch_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # Makes `import torch` fail.
  with pytest.raises(ImportError, match=r"coughjax\[bench\].*pip install torch"):
    vggish_convert.load_pytorch_checkpoint(tmp_path / "vggish.pth")


def test_cli_refuses_to_overwrite(tmp_path, capsys):
  with pytest.raises(SystemExit):
    vggish_convert.main(["--input", "x.pth", "--output", str(tmp_path)])
  assert "--force" in capsys.readouterr().err
