r"""Serialized models that run with JAX alone: `jax.export` of a classifier or encoder.

  python -m coughjax.export --workdir=runs/ensemble --output=export/ensemble
  python -m coughjax.export --workdir=runs/transformer_m50 --output=export/enc --batch=64

writes DIR/model.jax (`jax.export.Exported.serialize()` bytes: the StableHLO program
with the parameters baked in as constants) and DIR/model.json (what the inputs are
and how to make them). Load it without coughjax, config or Flax code:

  exported = jax.export.deserialize(bytearray(open("DIR/model.jax", "rb").read()))
  p = exported.call(x, rec_keys, clip_index)   # classifier: [b] P(positive)
  h = exported.call(x)                         # encoder: [b, d]

Inputs: x [b, clip_frames, nfilt] float32 log-mel clips (model.json's "features":
the `coughjax.audio.logfbank` parameters, clip length and hop); the batch b is
symbolic (any size) unless `batch` fixes it.

DS masks: a classifier is exported on its keyed path, `coughjax.infer.probabilities`,
with two more inputs per row: rec_keys [b, 2] uint32, the `infer.recording_key`
of the clip's recording (64 bits of BLAKE2b over its features' shape and
little-endian float32 bytes; model.json's "mask_key" says how), and clip_index [b]
int32, the clip's index in its recording. The program derives each clip's masks
from them with coughjax's counter hash (plain uint32 arithmetic, see
`coughjax.infer`), not with `jax.random`, so an ensemble with DS masking (e.g.
`ensemble`, 50 %) reproduces the live model's outputs under any JAX version or PRNG
setting; a model without inference masking ignores the two inputs. An encoder is exported on its deterministic path
(no mask: `coughjax.embed`'s default) and takes x alone.

The program runs on the platforms it was exported for (`--platforms`, default the
current backend).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Any, Optional, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from coughjax import cli
from coughjax import infer

PROGRAM, SIDECAR = "model.jax", "model.json"
MASK_KEY_DOC = ("rec_keys[i] = numpy.frombuffer(blake2b(int64 little-endian shape [T, nfilt] "
                "+ float32 little-endian bytes of the recording's [T, nfilt] log-mel "
                "features, zero-padded to clip_frames rows if shorter; digest_size=8)"
                ".digest(), '<u4') (coughjax.infer.recording_key)")


def _batch_dim(batch: Optional[int]):
  if batch is None:
    return jax.export.symbolic_shape("b")[0]
  if batch < 1:
    raise ValueError(f"batch must be >= 1 or None (symbolic), got {batch}")
  return batch


def _write(path: str | os.PathLike, exported: jax.export.Exported, meta: dict
           ) -> pathlib.Path:
  out = pathlib.Path(path)
  out.mkdir(parents=True, exist_ok=True)
  (out / PROGRAM).write_bytes(exported.serialize())
  (out / SIDECAR).write_text(json.dumps(meta, indent=2) + "\n")
  return out


def _meta(kind: str, spec, inputs: list[dict], output: dict, source: str,
          platforms) -> dict[str, Any]:
  return {"kind": kind, "source": source, "inputs": inputs, "output": output,
          "features": spec.to_dict(), "platforms": list(platforms),
          "jax_version": jax.__version__, "program": PROGRAM}


def export_classifier(workdir: str | os.PathLike, path: str | os.PathLike, *,
                      batch: Optional[int] = None,
                      platforms: Optional[Sequence[str]] = None) -> pathlib.Path:
  """Exports a downstream workdir's classifier (`coughjax.load_classifier`) to `path`.

  The function is (x [b, T, mel] float32, rec_keys [b, 2] uint32, clip_index [b]
  int32) -> [b] float32 P(positive) per clip, `infer.probabilities` with the best
  run's parameters as constants. Returns the folder.
  """
  from coughjax import predict  # pylint: disable=g-import-not-at-top
  clf = predict.load_classifier(workdir)
  b = _batch_dim(batch)
  spec = clf.spec
  # chunk_size=0: one program over the whole batch (rows are independent; chunking a
  # symbolic batch is not possible and the consumer picks its batch size anyway).
  fn = jax.jit(functools.partial(infer.probabilities, clf.model, clf.params, chunk_size=0))
  args = (jax.ShapeDtypeStruct((b, spec.clip_frames, spec.features.nfilt), jnp.float32),
          jax.ShapeDtypeStruct((b, 2), jnp.uint32), jax.ShapeDtypeStruct((b,), jnp.int32))
  exported = jax.export.export(fn, platforms=platforms)(*args)
  bs = "b" if batch is None else batch
  meta = _meta("classifier", spec, [
      {"name": "x", "shape": [bs, spec.clip_frames, spec.features.nfilt], "dtype": "float32",
       "doc": "log-mel clips"},
      {"name": "rec_keys", "shape": [bs, 2], "dtype": "uint32", "doc": MASK_KEY_DOC},
      {"name": "clip_index", "shape": [bs], "dtype": "int32",
       "doc": "clip index within its recording (clips every eval_hop frames)"}],
      {"shape": [bs], "dtype": "float32", "doc": "P(positive) per clip; a recording's "
       "score is the mean over its clips"},
      str(clf.run_dir), exported.platforms)
  meta["masks_at_inference"] = [infer.inference_mask_rate(e) for e in clf.model.encoders]
  return _write(path, exported, meta)


def export_encoder(source: str | os.PathLike, path: str | os.PathLike, *,
                   batch: Optional[int] = None, branch: int = 0,
                   platforms: Optional[Sequence[str]] = None) -> pathlib.Path:
  """Exports an encoder (anything `coughjax.load_encoder` takes) on its deterministic
  path: x [b, T, mel] float32 -> [b, d] float32 embeddings. Returns the folder."""
  from coughjax import embed  # pylint: disable=g-import-not-at-top
  encoder = embed.load_encoder(source, branch=branch)
  b = _batch_dim(batch)
  spec = encoder.spec
  fn = jax.jit(lambda x: infer.embeddings(encoder.module, encoder.params, x))
  x = jax.ShapeDtypeStruct((b, spec.clip_frames, spec.features.nfilt), jnp.float32)
  exported = jax.export.export(fn, platforms=platforms)(x)
  bs = "b" if batch is None else batch
  meta = _meta("encoder", spec, [
      {"name": "x", "shape": [bs, spec.clip_frames, spec.features.nfilt], "dtype": "float32",
       "doc": "log-mel clips"}],
      {"shape": [bs, encoder.dim], "dtype": "float32",
       "doc": "encoder output h per clip (before any head); a recording's embedding is "
              "the mean over its clips"}, encoder.source, exported.platforms)
  meta["encoder"] = encoder.config
  return _write(path, exported, meta)


def load(path: str | os.PathLike) -> tuple[jax.export.Exported, dict]:
  """(Exported, model.json) of an exported folder (needs only jax)."""
  folder = pathlib.Path(path)
  blob = (folder / PROGRAM).read_bytes()
  return jax.export.deserialize(bytearray(blob)), json.loads((folder / SIDECAR).read_text())


def main(argv):
  cli.quiet_logging()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  workdir = pathlib.Path(f.workdir)
  from coughjax import predict  # pylint: disable=g-import-not-at-top
  kind = f.kind or ("classifier" if (workdir / predict.ENCODERS_FILE).is_file() else "encoder")
  platforms = f.platforms or None
  if kind == "classifier":
    out = export_classifier(workdir, f.output, batch=f.batch, platforms=platforms)
  else:
    out = export_encoder(f.workdir, f.output, batch=f.batch, branch=f.branch,
                         platforms=platforms)
  meta = json.loads((out / SIDECAR).read_text())
  shapes = ", ".join(f"{i['name']} {i['shape']}" for i in meta["inputs"])
  print(f"{out / PROGRAM}: {kind} ({shapes}) -> {meta['output']['shape']}, "
        f"platforms {', '.join(meta['platforms'])}; {out / SIDECAR}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "downstream or pre-training workdir, or a shipped "
                      "encoder's name", required=True)
  flags.DEFINE_string("output", None, "folder to write model.jax and model.json",
                      required=True)
  flags.DEFINE_enum("kind", None, ["classifier", "encoder"], "default: classifier for a "
                    "downstream workdir, else encoder")
  flags.DEFINE_integer("batch", None, "fixed batch size (default: symbolic)")
  flags.DEFINE_integer("branch", 0, "encoder of a downstream ensemble (--kind=encoder)")
  flags.DEFINE_list("platforms", [], "e.g. cpu,cuda (default: the current backend)")
  app.run(main)
