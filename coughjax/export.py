r"""Serialized models: a `jax.export` program (needs JAX alone) or an ONNX file (needs none).

  python -m coughjax.export --workdir=runs/ensemble --output=export/ensemble
  python -m coughjax.export --workdir=runs/transformer_m50 --output=export/enc --batch=64
  python -m coughjax.export --workdir=transformer_m50_real --output=export/enc --format=onnx

`--workdir` is a downstream workdir (its classifier, or with `--kind=encoder` the
encoder of `--branch`), a pre-training workdir or a shipped encoder's name.

`--format=jax` (default) writes DIR/model.jax (`jax.export.Exported.serialize()`
bytes: the StableHLO program with the parameters baked in as constants) and
DIR/model.json (what the inputs are and how to make them). Load it without coughjax,
config or Flax code:

  exported = jax.export.deserialize(bytearray(open("DIR/model.jax", "rb").read()))
  p = exported.call(x, rec_keys, clip_index)   # classifier: [b] P(positive)
  h = exported.call(x)                         # encoder: [b, d]

`--format=onnx` writes DIR/model.onnx, converted by jax2onnx (the `onnx` extra:
pip install "coughjax[onnx]") from the same function, with the same inputs and
outputs, for ONNX Runtime (C++, Java, C#, JavaScript, mobile). Its metadata
(`metadata_props`; in onnxruntime `session.get_modelmeta().custom_metadata_map`)
holds, as JSON strings: "features" (sample rate, filterbank parameters with the FFT
size resolved, clip length `clip_frames` and hop `eval_hop`), "inputs", "output",
"kind", "source" and "coughjax_version" (and "masks_at_inference" for a classifier,
"encoder" for an encoder). docs/models.md shows the numpy + python_speech_features
lines that make the input from a waveform (integer PCM scaled, the "normalise" of
"features" applied). Before writing the file, the export runs it in onnxruntime on
sample inputs and raises `ExportError` unless it gives the JAX function's outputs
(to `ONNX_TOLERANCE`).

An empty batch (x of shape [0, clip_frames, nfilt]) must never reach onnxruntime:
on coughjax's models ONNX Runtime (1.24) kills the process with SIGFPE instead of
raising. `run_onnx`, which coughjax calls onnxruntime through, refuses one.

Inputs: x [b, clip_frames, nfilt] float32 log-mel clips; the batch b is symbolic (any
size) unless `batch` fixes it.

DS masks: a classifier is exported on its keyed path, `coughjax.infer.probabilities`,
with two more inputs per row: rec_keys [b, 2] uint32, the `mask_key.recording_key`
of the clip's recording (64 bits of BLAKE2b over its features' shape and
little-endian float32 bytes; its entry in "inputs" says how), and clip_index [b]
int32, the clip's index in its recording. The program derives each clip's masks
from them with coughjax's counter hash (plain uint32 arithmetic, see
`coughjax.infer`), not with `jax.random`, so an ensemble with DS masking (e.g.
`ensemble`, 50 %) reproduces the live model's outputs in either format, under any
JAX version or PRNG setting; a model without inference masking ignores the two
inputs. An encoder is exported on its deterministic path
(no mask: `coughjax.embed`'s default) and takes x alone.

Platforms: model settings of "auto" (`coughjax.models.platform`: attention kernel,
GRU streams, ...) are resolved for the platforms the program is for, not for the
machine that exports it. A jax.export program runs on its `--platforms` (default:
the current backend); where these mix the CPU and an accelerator, each gets its
own settings through `jax.lax.platform_dependent`. An ONNX file resolves them as for
the CPU (ONNX Runtime's default execution provider).

What ONNX cannot hold: jax2onnx lowers `jax.random` to ONNX's RandomUniform (new
bits on every run) and `fold_in` to an identity, which cannot reproduce JAX's bits.
A function that draws random bits with `jax.random` is therefore refused at export
with an error naming the primitives (`--format=jax` reproduces it); coughjax's
models draw none at inference (DS masks come from the counter hash). A primitive
jax2onnx has no lowering for is reported the same way. The Transformer, GRU and
VGGish encoders and the classifiers, DS-masked ensembles included, convert.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import json
import os
import pathlib
from typing import Any, Callable, Optional, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from coughjax import __version__
from coughjax import audio
from coughjax import cli
from coughjax import files
from coughjax import infer
from coughjax import inputs
from coughjax.models import platform as platform_lib

FORMATS = ("jax", "onnx")
PROGRAM, SIDECAR, ONNX_FILE = "model.jax", "model.json", "model.onnx"
MASK_KEY_DOC = ("rec_keys[i] = numpy.frombuffer(blake2b(int64 little-endian shape [T, nfilt] "
                "+ float32 little-endian bytes of the recording's [T, nfilt] log-mel "
                "features, repeated (tiled) to clip_frames rows if shorter; digest_size=8)"
                ".digest(), '<u4') (coughjax.data.mask_key.recording_key)")
# "auto" settings of an ONNX file are those of this platform.
ONNX_PLATFORM = "cpu"
# The exported ONNX file must give the JAX function's outputs on sample inputs to
# within this, relative to the largest output (at least 1), or the export fails.
ONNX_TOLERANCE = 1e-4
# jax.random's key plumbing: harmless where no bits are drawn from the keys.
_KEY_PRIMITIVES = ("random_seed", "random_wrap", "random_unwrap", "random_fold_in",
                   "random_split")


class ExportError(RuntimeError):
  """The model cannot be exported to the requested format (the message says why)."""


@dataclasses.dataclass
class _Program:
  """A function to export and what its inputs and output are.

  Attributes:
    fn: (inputs...) -> output, the parameters closed over.
    inputs: per input, {"name", "shape" (with "b" for the batch), "dtype", "doc"}.
    meta: "kind", "source", "output", "features" and kind-specific entries.
  """
  fn: Callable[..., jax.Array]
  inputs: list[dict[str, Any]]
  meta: dict[str, Any]

  def specs(self, batch) -> list[jax.ShapeDtypeStruct]:
    """The input shapes with `batch` (an int, a symbolic dimension or a name) as b."""
    return [jax.ShapeDtypeStruct(tuple(batch if d == "b" else d for d in i["shape"]),
                                 jnp.dtype(i["dtype"])) for i in self.inputs]


def features_meta(spec: inputs.ClipSpec) -> dict[str, Any]:
  """`spec.to_dict()` with the FFT size resolved (`nfft` 0 means the smallest power
  of two covering the window): the parameters python_speech_features takes."""
  f = spec.features
  _, _, nfft = audio.frame_params(f.sample_rate, f.winlen, f.winstep, f.nfft or None)
  return {**spec.to_dict(), "nfft": nfft}


def _x_input(spec: inputs.ClipSpec) -> dict[str, Any]:
  return {"name": "x", "shape": ["b", spec.clip_frames, spec.features.nfilt],
          "dtype": "float32", "doc": "log-mel clips"}


def _classifier_program(workdir: str | os.PathLike) -> _Program:
  from coughjax import predict  # pylint: disable=g-import-not-at-top
  clf = predict.load_classifier(workdir)
  # chunk_size=0: one program over the whole batch (rows are independent; chunking a
  # symbolic batch is not possible and the consumer picks its batch size anyway).
  fn = functools.partial(infer.probabilities, clf.model, clf.params, chunk_size=0)
  program_inputs = [
      _x_input(clf.spec),
      {"name": "rec_keys", "shape": ["b", 2], "dtype": "uint32", "doc": MASK_KEY_DOC},
      {"name": "clip_index", "shape": ["b"], "dtype": "int32",
       "doc": "clip index within its recording (clips every eval_hop frames)"}]
  meta = {"kind": "classifier", "source": str(clf.run_dir),
          "output": {"name": "p", "shape": ["b"], "dtype": "float32",
                     "doc": "P(positive) per clip; a recording's score is the mean over "
                            "its clips"},
          "features": features_meta(clf.spec),
          "masks_at_inference": [infer.inference_mask_rate(e) for e in clf.model.encoders]}
  return _Program(fn, program_inputs, meta)


def _encoder_program(source: str | os.PathLike, branch: int) -> _Program:
  from coughjax import embed  # pylint: disable=g-import-not-at-top
  encoder = embed.load_encoder(source, branch=branch)
  fn = functools.partial(infer.embeddings, encoder.module, encoder.params)
  meta = {"kind": "encoder", "source": encoder.source,
          "output": {"name": "h", "shape": ["b", encoder.dim], "dtype": "float32",
                     "doc": "encoder output h per clip (before any head); a recording's "
                            "embedding is the mean over its clips"},
          "features": features_meta(encoder.spec), "encoder": encoder.config}
  return _Program(fn, [_x_input(encoder.spec)], meta)


def _traced_for(fn: Callable, platform: str) -> Callable:
  """fn traced with "auto" settings resolved for `platform`."""

  def traced(*args):
    with platform_lib.target(platform):
      return fn(*args)

  return traced


def for_platforms(fn: Callable, platforms: Sequence[str]) -> Callable:
  """fn with its "auto" settings resolved for each of `platforms`.

  Settings are the same on every accelerator, so fn is traced once if the platforms
  are all CPU or all accelerators; where they mix both, `jax.lax.platform_dependent`
  holds a CPU and an accelerator trace, and each platform's lowering keeps its own.
  """
  platforms = [p.lower() for p in platforms]
  cpu = [p for p in platforms if platform_lib.on_cpu(p)]
  accelerators = [p for p in platforms if not platform_lib.on_cpu(p)]
  if not cpu or not accelerators:
    return _traced_for(fn, platforms[0])
  cpu_fn, accelerator_fn = _traced_for(fn, "cpu"), _traced_for(fn, accelerators[0])
  return lambda *args: jax.lax.platform_dependent(*args, cpu=cpu_fn, default=accelerator_fn)


def _batch_dim(batch: Optional[int]):
  if batch is None:
    return "b"
  if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
    raise ValueError(f"batch must be an int >= 1 or None (symbolic), got {batch!r}")
  return int(batch)


def _meta(program: _Program, batch, /, **extra) -> dict[str, Any]:
  """What an exported file says of itself: `program.meta` with the inputs and output
  at `batch` ("b" if symbolic), the coughjax version and `extra`."""
  at = lambda io: dict(io, shape=[batch if d == "b" else d for d in io["shape"]])
  return {**program.meta, "inputs": [at(i) for i in program.inputs],
          "output": at(program.meta["output"]), "coughjax_version": __version__, **extra}


def _export_jax(program: _Program, path: pathlib.Path, batch: Optional[int],
                platforms: Optional[Sequence[str]]) -> pathlib.Path:
  b = _batch_dim(batch)
  dim = jax.export.symbolic_shape("b")[0] if b == "b" else b
  targets = list(platforms) if platforms else [jax.default_backend()]
  fn = jax.jit(for_platforms(program.fn, targets))
  exported = jax.export.export(fn, platforms=platforms)(*program.specs(dim))
  meta = _meta(program, b, platforms=list(exported.platforms), jax_version=jax.__version__,
               program=PROGRAM)
  blob = exported.serialize()  # model.jax, then model.json, each whole or not at all
  files.atomic_write(path / PROGRAM, lambda f: f.write(blob))
  files.atomic_write(path / SIDECAR,
                     lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
  return path


def _onnx_modules():
  """(jax2onnx, onnx, onnxruntime), or an error saying how to install them."""
  try:
    return tuple(importlib.import_module(m) for m in ("jax2onnx", "onnx", "onnxruntime"))
  except ImportError as e:
    raise ImportError(f"--format=onnx needs jax2onnx, onnx and onnxruntime ({e}); "
                      "install them with: pip install \"coughjax[onnx]\"") from e


def primitives(jaxpr) -> set[str]:
  """Names of every primitive in a (closed) jaxpr, its sub-jaxprs included."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
          names |= primitives(sub)
  return names


def _check_convertible(fn: Callable, program: _Program, converter: str) -> None:
  """Raises ExportError if fn draws random bits with jax.random (see the module doc).

  Only primitives that draw bits are refused here; the numerical check after the
  conversion catches any other use of a key (its data read as numbers).
  """
  found = sorted(p for p in primitives(jax.make_jaxpr(fn)(*program.specs(2)))
                 if p.startswith(("random_", "threefry", "rng_"))
                 and p not in _KEY_PRIMITIVES)
  if found:
    raise ExportError(
        f"{program.meta['source']}: cannot export this {program.meta['kind']} to ONNX: it "
        f"draws random bits with jax.random ({', '.join(found)}). {converter} lowers "
        "jax.random to ONNX RandomUniform (new bits on every run) and fold_in to an "
        "identity, so the ONNX model would not give the live model's outputs; "
        "--format=jax reproduces them.")


def _session(onnxruntime, model_bytes: bytes):
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # errors only (not the unused-initializer notes)
  return onnxruntime.InferenceSession(model_bytes, options,
                                      providers=["CPUExecutionProvider"])


def run_onnx(session, feeds: dict[str, np.ndarray]) -> np.ndarray:
  """`session.run(None, feeds)[0]`, refusing an empty batch before it reaches
  onnxruntime (which dies on one with SIGFPE, see the module docstring).

  Raises:
    ValueError naming the inputs with no rows.
  """
  empty = [f"{k} {tuple(np.shape(v))}" for k, v in feeds.items() if np.shape(v)[:1] == (0,)]
  if empty:
    raise ValueError(f"empty batch ({', '.join(empty)}): ONNX Runtime would kill the "
                     "process (SIGFPE) on it; give at least one clip")
  return session.run(None, feeds)[0]


def _sample_inputs(program: _Program, rows: int) -> list[np.ndarray]:
  """Inputs to check the ONNX file on: log-mel-like clips, random keys and indices."""
  rng = np.random.default_rng(0)
  out = []
  for spec in program.specs(rows):
    if spec.dtype == jnp.float32:
      out.append((rng.normal(-8.0, 4.0, spec.shape)).astype(np.float32))
    elif spec.dtype == jnp.uint32:
      out.append(rng.integers(0, 2**32, spec.shape, dtype=np.uint64).astype(np.uint32))
    else:
      out.append(rng.integers(0, 8, spec.shape).astype(spec.dtype))
  return out


def _export_onnx(program: _Program, path: pathlib.Path, batch: Optional[int]
                 ) -> pathlib.Path:
  jax2onnx, onnx, onnxruntime = _onnx_modules()
  converter = f"jax2onnx {importlib.metadata.version('jax2onnx')}"
  b = _batch_dim(batch)
  fn = for_platforms(program.fn, [ONNX_PLATFORM])
  _check_convertible(fn, program, converter)
  try:
    model = jax2onnx.to_onnx(fn, program.specs(b), model_name=f"coughjax_{program.meta['kind']}",
                             input_names=[i["name"] for i in program.inputs],
                             output_names=[program.meta["output"]["name"]])
  except Exception as e:  # a primitive the converter cannot lower: say whose, and what
    raise ExportError(f"{program.meta['source']}: {converter} cannot convert this "
                      f"{program.meta['kind']} to ONNX: {type(e).__name__}: {e}. "
                      "--format=jax exports it.") from e
  meta = _meta(program, b, converter=converter, auto_settings_for=ONNX_PLATFORM)
  onnx.helper.set_model_props(model, {k: v if isinstance(v, str) else json.dumps(v)
                                      for k, v in meta.items()})
  model.doc_string = f"coughjax {program.meta['kind']} from {program.meta['source']}"
  blob = model.SerializeToString()
  sample = _sample_inputs(program, 3 if b == "b" else b)
  try:
    got = run_onnx(_session(onnxruntime, blob),
                   {i["name"]: a for i, a in zip(program.inputs, sample)})
  except Exception as e:  # e.g. an ONNX operator that onnxruntime does not implement
    raise ExportError(f"{program.meta['source']}: onnxruntime cannot run the ONNX model "
                      f"that {converter} made of this {program.meta['kind']}: "
                      f"{type(e).__name__}: {e}; not written") from e
  want = np.asarray(jax.jit(fn)(*sample))
  if got.shape != want.shape:
    raise ExportError(f"{program.meta['source']}: the ONNX model from {converter} gives "
                      f"outputs of shape {got.shape}, the JAX function {want.shape}; not written")
  diff, bound = np.max(np.abs(got - want)), ONNX_TOLERANCE * max(1.0, np.max(np.abs(want)))
  if not diff <= bound:  # NaN fails too
    raise ExportError(f"{program.meta['source']}: the ONNX model from {converter} does not "
                      f"reproduce the JAX function on sample inputs (max |diff| {diff:.3g} > "
                      f"{bound:.3g}); not written")
  files.atomic_write(path / ONNX_FILE, lambda f: f.write(blob))
  return path


def _prepare(path: str | os.PathLike) -> pathlib.Path:
  """The output folder, checked before any work (`files.check_output`); an earlier
  export's files in it are removed, so that a failed export leaves nothing that
  passes for its result."""
  out = files.check_output(path, folder=True, flag="path")
  for name in (PROGRAM, SIDECAR, ONNX_FILE):
    (out / name).unlink(missing_ok=True)
  return out


def _export(program: Callable[[], _Program], path, batch, platforms, format  # pylint: disable=redefined-builtin
            ) -> pathlib.Path:
  """Checks the arguments and the output folder, then builds `program()` and writes
  it in `format`."""
  if format not in FORMATS:
    raise ValueError(f"unknown export format {format!r}; expected one of {FORMATS}")
  if format == "onnx" and platforms:
    raise ValueError(f"platforms {list(platforms)} apply to --format=jax only; an ONNX "
                     f"file runs wherever ONNX Runtime does")
  out = _prepare(path)
  if format == "onnx":
    return _export_onnx(program(), out, batch)
  return _export_jax(program(), out, batch, platforms)


def export_classifier(workdir: str | os.PathLike, path: str | os.PathLike, *,
                      batch: Optional[int] = None,
                      platforms: Optional[Sequence[str]] = None,
                      format: str = "jax") -> pathlib.Path:  # pylint: disable=redefined-builtin
  """Exports a downstream workdir's classifier (`coughjax.load_classifier`) to `path`.

  The function is (x [b, T, mel] float32, rec_keys [b, 2] uint32, clip_index [b]
  int32) -> [b] float32 P(positive) per clip, `infer.probabilities` with the best
  run's parameters as constants.

  Args:
    workdir: a downstream workdir.
    path: the folder to write (model.jax + model.json, or model.onnx).
    batch: a fixed batch size; None = symbolic.
    platforms: jax.export platforms (format "jax"); None = the current backend.
    format: "jax" or "onnx" (see the module doc).

  Returns:
    The folder.

  Raises:
    ExportError: format "onnx" and the model cannot be converted faithfully.
  """
  return _export(functools.partial(_classifier_program, workdir), path, batch, platforms,
                 format)


def export_encoder(source: str | os.PathLike, path: str | os.PathLike, *,
                   batch: Optional[int] = None, branch: int = 0,
                   platforms: Optional[Sequence[str]] = None,
                   format: str = "jax") -> pathlib.Path:  # pylint: disable=redefined-builtin
  """Exports an encoder (anything `coughjax.load_encoder` takes) on its deterministic
  path: x [b, T, mel] float32 -> [b, d] float32 embeddings. Returns the folder.

  Args as `export_classifier`, and `branch`: the encoder of a downstream ensemble.
  """
  return _export(functools.partial(_encoder_program, source, branch), path, batch,
                 platforms, format)


def load(path: str | os.PathLike) -> tuple[jax.export.Exported, dict]:
  """(Exported, model.json) of a folder exported with format "jax" (needs only jax)."""
  folder = pathlib.Path(path)
  blob = (folder / PROGRAM).read_bytes()
  return jax.export.deserialize(bytearray(blob)), json.loads((folder / SIDECAR).read_text())


@cli.user_errors
def main(argv):
  cli.quiet_logging()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  workdir = pathlib.Path(f.workdir)
  from coughjax import predict  # pylint: disable=g-import-not-at-top
  kind = f.kind or ("classifier" if (workdir / predict.ENCODERS_FILE).is_file() else "encoder")
  if f.format == "onnx" and not f["verbosity"].present:
    import logging  # pylint: disable=g-import-not-at-top
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # notes on untyped constants
  args = dict(batch=f.batch, platforms=f.platforms or None, format=f.format)
  try:
    files.check_output(f.output, folder=True)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if kind == "classifier":
    out = export_classifier(workdir, f.output, **args)
  else:
    out = export_encoder(f.workdir, f.output, branch=f.branch, **args)
  if f.format == "onnx":
    import onnx  # pylint: disable=g-import-not-at-top
    props = {p.key: p.value for p in onnx.load(out / ONNX_FILE).metadata_props}
    meta = {k: json.loads(props[k]) for k in ("inputs", "output")}
    where, file = f"onnxruntime ({props['converter']})", out / ONNX_FILE
  else:
    meta = json.loads((out / SIDECAR).read_text())
    where, file = f"platforms {', '.join(meta['platforms'])}; {out / SIDECAR}", out / PROGRAM
  shapes = ", ".join(f"{i['name']} {i['shape']}" for i in meta["inputs"])
  print(f"{file}: {kind} ({shapes}) -> {meta['output']['shape']}, {where}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "downstream or pre-training workdir, or a shipped "
                      "encoder's name", required=True)
  flags.DEFINE_string("output", None, "folder to write model.jax and model.json, or "
                      "model.onnx", required=True)
  flags.DEFINE_enum("format", "jax", list(FORMATS), "jax: a jax.export program; onnx: an "
                    "ONNX file (needs the onnx extra)")
  flags.DEFINE_enum("kind", None, ["classifier", "encoder"], "default: classifier for a "
                    "downstream workdir, else encoder")
  flags.DEFINE_integer("batch", None, "fixed batch size (default: symbolic)")
  flags.DEFINE_integer("branch", 0, "encoder of a downstream ensemble (--kind=encoder)")
  flags.DEFINE_list("platforms", [], "--format=jax: e.g. cpu,cuda (default: the current "
                    "backend)")
  app.run(main)
