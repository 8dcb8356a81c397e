r"""Shipped encoders: pre-trained parameters that `coughjax.load_encoder(name)` reads
offline.

Per encoder, three files in this package folder:

  <name>.msgpack   the encoder's parameters (`flax.serialization.msgpack_serialize`)
  <name>.json      its resolved settings, the feature parameters that make its
                   inputs, the embedding size, where it came from, and the
                   SHA-256 of the .msgpack (`params_sha256`), checked at load
  <name>.md        its card: the text given when it was shipped, then those facts

Ship one from a workdir (normally a pre-training run):

  python -m coughjax.encoders --workdir=runs/transformer_m50_real \
      --name=transformer_m50_real --card=card.md

or `coughjax.encoders.ship(workdir, name, card_text)`. `$COUGHJAX_ENCODERS` points
both the writing and the reading at another folder (tests do this).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import re
from typing import Any, Optional

import numpy as np

from coughjax import files

FORMAT = 1
# The .json key holding the SHA-256 of the .msgpack's bytes, checked by `read`.
PARAMS_SHA256 = "params_sha256"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def directory() -> pathlib.Path:
  """Where shipped encoders live: `$COUGHJAX_ENCODERS`, else this package folder."""
  env = os.environ.get("COUGHJAX_ENCODERS")
  return pathlib.Path(env) if env else pathlib.Path(__file__).resolve().parent


def names() -> list[str]:
  """The shipped encoders (those with both a .json and a .msgpack)."""
  folder = directory()
  if not folder.is_dir():
    return []
  return sorted(p.stem for p in folder.glob("*.json")
                if p.with_suffix(".msgpack").is_file())


@dataclasses.dataclass
class Shipped:
  name: str
  config: dict[str, Any]   # encoder settings (`coughjax.models.build_encoder`)
  params: Any              # nested dict of numpy arrays
  spec: Any                # `coughjax.inputs.ClipSpec`
  meta: dict[str, Any]     # the whole .json


def params_digest(blob: bytes) -> str:
  """The SHA-256 (hex) of a .msgpack's bytes, recorded in the .json as PARAMS_SHA256."""
  return hashlib.sha256(blob).hexdigest()


def read(name: str) -> Shipped:
  """A shipped encoder's files, checked: the .json is readable and complete, and
  the .msgpack's bytes have the SHA-256 the .json records (a damaged or replaced
  parameter file is an error naming it, never NaN embeddings)."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  from coughjax import inputs  # pylint: disable=g-import-not-at-top
  folder = directory()
  meta_path, params_path = folder / f"{name}.json", folder / f"{name}.msgpack"
  for p in (meta_path, params_path):
    if not p.is_file():
      raise FileNotFoundError(f"{p}: not found; shipped encoders in {folder}: "
                              f"{', '.join(names()) or 'none'}")
  meta = files.read_json(meta_path, "shipped encoder settings",
                         required=("format", "encoder", "features", PARAMS_SHA256))
  if meta["format"] != FORMAT:
    raise ValueError(f"{meta_path}: format {meta['format']!r}, this coughjax reads "
                     f"format {FORMAT}")
  blob = params_path.read_bytes()
  if params_digest(blob) != meta[PARAMS_SHA256]:
    raise ValueError(f"{params_path}: SHA-256 {params_digest(blob)} is not the "
                     f"{meta[PARAMS_SHA256]} recorded in {meta_path}: the parameters are "
                     "damaged or were replaced; reinstall coughjax or ship the encoder "
                     "again (python -m coughjax.encoders)")
  try:
    params = serialization.msgpack_restore(blob)
  except Exception as e:  # msgpack raises several types
    raise ValueError(f"{params_path}: cannot be read ({type(e).__name__}: {e})") from e
  if not isinstance(meta["encoder"], dict) or "name" not in meta["encoder"]:
    raise ValueError(f"{meta_path}: shipped encoder settings: 'encoder' must be an "
                     f"object with a 'name', got {meta['encoder']!r}")
  try:
    spec = inputs.ClipSpec.from_config(meta["features"])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{meta_path}: shipped encoder settings: bad 'features' "
                     f"({type(e).__name__}: {e})") from e
  return Shipped(name, meta["encoder"], params, spec, meta)


def ship(workdir: str | os.PathLike, name: str, card_text: str, *, branch: int = 0,
         folder: Optional[str | os.PathLike] = None) -> pathlib.Path:
  """Writes <name>.msgpack / .json / .md for the encoder of `workdir`.

  Args:
    workdir: anything `coughjax.load_encoder` takes as a workdir (a pre-training run:
      its best checkpoint's encoder, without the projection head).
    name: the shipped name (letters, digits, `_`, `-`, `.`).
    card_text: the card's own text (what it was trained on, for what, caveats);
      the generated facts follow it.
    branch: a downstream ensemble's encoder.
    folder: where to write (default `directory()`).

  Returns:
    The .json path.
  """
  from flax import serialization  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from coughjax import embed  # pylint: disable=g-import-not-at-top
  if not _NAME.match(name):
    raise ValueError(f"encoder name {name!r}: use letters, digits, '_', '-', '.'")
  if not card_text.strip():
    raise ValueError(f"{name}: the card text is empty; say what the encoder was trained "
                     "on and what it is for")
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f"{workdir}: no such workdir")
  out = files.check_output(folder or directory(), folder=True, flag="folder")
  encoder = embed.load_encoder(workdir, branch=branch)
  params = jax.tree.map(np.asarray, jax.device_get(encoder.params))
  config = dict(encoder.config, mask_at_eval=False)
  config_json = json.loads((workdir / "config.json").read_text())
  meta = {
      "format": FORMAT, "name": name, "encoder": config,
      "features": encoder.spec.to_dict(), "dim": encoder.dim,
      "source": {"workdir": str(workdir.resolve()), "loaded": encoder.source,
                 "variant": config_json.get("variant"),
                 "data": config_json.get("data", {}).get("name"),
                 "shipped": datetime.datetime.now(datetime.timezone.utc).isoformat(
                     timespec="seconds")},
      "num_params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
  }
  blob = serialization.msgpack_serialize(params)
  meta[PARAMS_SHA256] = params_digest(blob)
  # Parameters first, settings (with their digest) last: a half-shipped encoder
  # either is not listed (`names` needs both) or fails its digest check.
  files.atomic_write(out / f"{name}.msgpack", lambda f: f.write(blob))
  files.atomic_write(out / f"{name}.md",
                     lambda f: f.write(_card(name, card_text, meta).encode()))
  files.atomic_write(out / f"{name}.json",
                     lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
  return out / f"{name}.json"


def _card(name: str, text: str, meta: dict) -> str:
  f = meta["features"]
  arch = ", ".join(f"{k}={v}" for k, v in meta["encoder"].items() if k != "name")
  return (f"# {name}\n\n{text.strip()}\n\n## Facts (generated)\n\n"
          f"- encoder: {meta['encoder']['name']} ({arch}); {meta['num_params']:,} "
          f"parameters; embedding d = {meta['dim']} (the encoder output h, before the "
          "projection head)\n"
          f"- inputs: {f['sample_rate']} Hz mono, {f['nfilt']}-bin log-mel "
          f"({f['winlen'] * 1000:g} ms window, {f['winstep'] * 1000:g} ms step, "
          f"pre-emphasis {f['preemph']}), clips of {f['clip_frames']} frames every "
          f"{f['eval_hop']}\n"
          f"- from: {meta['source']['loaded']} (variant {meta['source']['variant']}, "
          f"data {meta['source']['data']}), shipped {meta['source']['shipped']}\n"
          f"- load: `coughjax.load_encoder({name!r})`\n")
