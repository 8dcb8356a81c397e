"""PyTorch VGGish weights (AudioSet) -> Flax params for `coughjax.models.vggish`.

The paper's pre-trained VGGish is the PyTorch port of the AudioSet release. It cannot
be downloaded here, so the user supplies the `.pth` file; this module converts it once
and saves the Flax params with Orbax for the downstream trainer:

  python -m coughjax.models.vggish_convert --input vggish.pth --output DIR

State-dict layout accepted (both public ports share it; they differ only in the name
of the FC block):

  features.{0,3,6,8,11,13}.{weight,bias}   convs (ReLUs and pools hold no weights)
  fc.{0,2,4}.{weight,bias}                 tcvrick/audioset-vggish-tensorflow-to-pytorch
  embeddings.{0,2,4}.{weight,bias}         harritaylor/torchvggish

torchvggish models also carry `pproc.pca_matrix` / `pproc.pca_means`: its optional
PCA-whitening post-processor, not part of the network, so they are skipped.

Layouts: conv OIHW -> HWIO, linear [out, in] -> [in, out]. Both ports permute the last
feature map NCHW -> NHWC before flattening (as TensorFlow did), so the first FC's input
rows are already in the (h, w, c) order of the NHWC Flax model. A checkpoint whose FC
was trained on a plain NCHW `x.view(B, -1)` is converted with `flatten_order="nchw"`,
which permutes those rows from (c, h, w) to (h, w, c).
"""

import argparse
import os
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import numpy as np

from coughjax import cli
from coughjax.models import vggish

TORCH_EXTRA = "pip install 'coughjax[bench]' (or: pip install torch)"

# Positions of the weighted layers in the ports' nn.Sequential blocks.
_TORCH_CONV_INDEX = (0, 3, 6, 8, 11, 13)
_TORCH_FC_INDEX = (0, 2, 4)
_FC_BLOCK_NAMES = ("fc", "embeddings")
_IGNORED_KEYS = frozenset({"pproc.pca_matrix", "pproc.pca_means"})
# Keys under which training scripts commonly wrap a state dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


def torch_key_map(fc_block: str = "fc") -> dict[str, tuple[str, str]]:
  """PyTorch state-dict key -> (Flax module name, 'kernel' | 'bias')."""
  if fc_block not in _FC_BLOCK_NAMES:
    raise ValueError(f"fc_block must be one of {_FC_BLOCK_NAMES}, got {fc_block!r}")
  fc_names = [name for name, _ in vggish.HIDDEN_FC_LAYERS] + [vggish.EMBEDDING_LAYER]
  pairs = ([(f"features.{i}", name)
            for i, (name, _, _) in zip(_TORCH_CONV_INDEX, vggish.CONV_LAYERS)]
           + [(f"{fc_block}.{i}", name) for i, name in zip(_TORCH_FC_INDEX, fc_names)])
  return {f"{prefix}.{suffix}": (name, leaf)
          for prefix, name in pairs
          for suffix, leaf in (("weight", "kernel"), ("bias", "bias"))}


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of a Flax leaf: HWIO -> OIHW, [in, out] -> [out, in]."""
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  return tuple(reversed(flax_shape))


def _to_flax(value: np.ndarray, name: str, flatten_order: str) -> np.ndarray:
  if value.ndim == 4:  # Conv [O, I, H, W] -> [H, W, I, O].
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:  # Linear [out, in] -> [in, out].
    kernel = value.T
    if name == vggish.HIDDEN_FC_LAYERS[0][0] and flatten_order == "nchw":
      h, w, c = vggish.FEATURE_MAP_SHAPE
      kernel = (kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3)
                .reshape(h * w * c, -1))
    return kernel
  return value


def _strip_data_parallel(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
  # nn.DataParallel / DDP save every key with a "module." prefix.
  if state_dict and all(k.startswith("module.") for k in state_dict):
    return {k[len("module."):]: v for k, v in state_dict.items()}
  return state_dict


def convert_state_dict(
    state_dict: Mapping[str, Any],
    *,
    flatten_order: str = "nhwc",
    embedding_dim: int = 128,
) -> dict[str, dict[str, np.ndarray]]:
  """Converts a PyTorch VGGish state dict into VGGish's Flax `params` collection.

  Args:
    state_dict: key -> array-like (numpy arrays, or CPU torch tensors) in the layout
      of the module docstring; the FC block may be named `fc` or `embeddings`.
    flatten_order: how the checkpoint's model flattened the last [512, 6, 4] feature
      map before its first FC layer: "nhwc" (both public ports, TensorFlow) or "nchw".
    embedding_dim: width of the checkpoint's embedding layer (128 for AudioSet).

  Returns:
    {module name: {"kernel": ..., "bias": ...}} float32 numpy arrays, to be used as
    `VGGish(embedding_dim=embedding_dim).apply({"params": params}, x, train=False)`.

  Raises:
    ValueError: unknown flatten order, missing or unexpected keys (all listed), or a
      shape that does not match (the key, expected and actual shapes named).
  """
  if flatten_order not in ("nhwc", "nchw"):
    raise ValueError(f"flatten_order must be 'nhwc' or 'nchw', got {flatten_order!r}")
  state_dict = _strip_data_parallel(state_dict)
  fc_block = "embeddings" if any(k.startswith("embeddings.") for k in state_dict) else "fc"
  key_map = torch_key_map(fc_block)
  given = set(state_dict) - _IGNORED_KEYS
  missing = sorted(set(key_map) - given)
  unexpected = sorted(given - set(key_map))
  if missing or unexpected:
    raise ValueError(
        f"not a VGGish state dict (FC block {fc_block!r}): "
        f"missing keys {missing or 'none'}; unexpected keys {unexpected or 'none'}")
  skipped = sorted(set(state_dict) & _IGNORED_KEYS)
  if skipped:
    logging.info("VGGish conversion: skipping post-processor keys %s", skipped)

  abstract = vggish.abstract_params(embedding_dim)
  params: dict[str, dict[str, np.ndarray]] = {}
  for key, (name, leaf) in key_map.items():
    value = np.asarray(state_dict[key], dtype=np.float32)
    expected = _torch_shape(abstract[name][leaf].shape)
    if value.shape != expected:
      raise ValueError(f"{key}: expected shape {expected} (for Flax {name}/{leaf}), "
                       f"got {value.shape}")
    params.setdefault(name, {})[leaf] = np.ascontiguousarray(
        _to_flax(value, name, flatten_order))
  return params


def _find_state_dict(obj: Any, path: str) -> Mapping[str, Any]:
  """The state dict itself, or the one a training script wrapped it in."""
  if isinstance(obj, Mapping):
    for k in _WRAPPER_KEYS:
      if isinstance(obj.get(k), Mapping):
        return obj[k]
    return obj
  raise ValueError(f"{path}: expected a state dict (or a dict holding one under "
                   f"{list(_WRAPPER_KEYS)}), got {type(obj).__name__}")


def load_pytorch_checkpoint(
    path: str | os.PathLike,
    *,
    flatten_order: str = "nhwc",
    embedding_dim: int = 128,
) -> dict[str, dict[str, np.ndarray]]:
  """Reads a PyTorch VGGish `.pth` file and converts it (see `convert_state_dict`).

  The file may hold the state dict itself or a dict wrapping it under one of
  "state_dict", "model_state_dict" or "model". Only tensors are unpickled
  (`weights_only=True`), so a pickled nn.Module is refused: save its state_dict().
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"reading PyTorch checkpoints needs torch: {TORCH_EXTRA}") from e
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  obj = torch.load(path, map_location="cpu", weights_only=True)
  state_dict = _find_state_dict(obj, path)
  # .float() first: numpy has no bfloat16, and the Flax params are float32 anyway.
  arrays = {k: (v.detach().float().numpy() if isinstance(v, torch.Tensor) else v)
            for k, v in state_dict.items()}
  try:
    return convert_state_dict(arrays, flatten_order=flatten_order,
                              embedding_dim=embedding_dim)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e


def save_flax_params(params: Mapping[str, Any], directory: str | os.PathLike, *,
                     force: bool = False) -> str:
  """Saves a params tree with Orbax; returns the absolute checkpoint directory."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(os.fspath(directory))  # Orbax wants absolute paths.
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory, params, force=force)
    checkpointer.wait_until_finished()
  return directory


def load_flax_params(directory: str | os.PathLike,
                     embedding_dim: int = 128) -> dict[str, Any]:
  """Restores params saved by `save_flax_params` / the CLI, checked against VGGish.

  Restoring against VGGish's abstract params makes Orbax verify every leaf's shape
  and yields a tree that plugs into `{"params": ...}` (or an encoder sub-tree).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory}: no Orbax checkpoint directory")
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(directory, vggish.abstract_params(embedding_dim))


@cli.user_errors
def main(argv: Optional[Sequence[str]] = None) -> None:
  # argparse rather than absl flags: flags defined at import time would clash with
  # those of any program that imports this module.
  parser = argparse.ArgumentParser(
      prog="python -m coughjax.models.vggish_convert",
      description="Convert PyTorch VGGish (AudioSet) weights to an Orbax Flax checkpoint.")
  parser.add_argument("--input", required=True, help="PyTorch .pth state dict")
  parser.add_argument("--output", required=True, help="Orbax checkpoint directory")
  parser.add_argument("--flatten_order", choices=("nhwc", "nchw"), default="nhwc",
                      help="flatten order before the first FC layer (ports: nhwc)")
  parser.add_argument("--force", action="store_true",
                      help="overwrite an existing output directory")
  args = parser.parse_args(argv)
  if os.path.exists(args.output) and not args.force:
    parser.error(f"{args.output} already exists; pass --force to overwrite it")
  params = load_pytorch_checkpoint(args.input, flatten_order=args.flatten_order)
  out = save_flax_params(params, args.output, force=args.force)
  count = sum(v.size for layer in params.values() for v in layer.values())
  print(f"saved {count:,} VGGish parameters to {out}")


if __name__ == "__main__":
  main(None)
