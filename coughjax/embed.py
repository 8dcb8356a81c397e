r"""Embeddings of recordings from a pre-trained encoder: Python API and command.

  python -m coughjax.embed --workdir=runs/transformer_m50 --output=emb.npz a.wav b.flac
  python -m coughjax.embed --workdir=runs/transformer_m50 --output=emb.npz \
      --config.data.name=coswara --config.data.root=/data/coswara_ci --config.data.label=sex

`--workdir` (alias `--encoder`) is a pre-training workdir, a downstream workdir
(its best run as in `coughjax.predict`; `--branch=1` picks an ensemble's second
encoder) or the name of a shipped encoder (`coughjax.encoders`). Without files, every
recording of the configured data source (`--config.data.*`, defaults from
configs/probe.py) is embedded, with its label where known. The .npz holds:

  embeddings       [recordings, d] float32   mean of each recording's clip embeddings
  clip_embeddings  [clips, d] float32
  clip_recording   [clips] int               row of `embeddings` each clip belongs to
  clip_index       [clips] int               the clip's index within its recording
  paths, ids       [recordings] str          file paths; participant ids (files: paths)
  labels           [recordings] int          1 / 0, -1 where unknown (files: all -1)
  failed_paths, failed_reasons  [failures] str   files that could not be embedded

Python:

  encoder = coughjax.load_encoder("runs/transformer_m50")
  h = encoder.embed(waveform, sample_rate)            # [d]
  clips = encoder.embed_clips(waveform, sample_rate)  # [n_clips, d]
  out = encoder.embed_files(paths)  # .recordings [n, d], .clips, .errors, ...

What the embedding is: the encoder's output h (paper Fig. 3: the pooled Transformer
/ last GRU state / VGGish embedding), *before* the projection head g of
pre-training and before the classifier head of a downstream run. Inputs are made as
in `coughjax.predict` (`coughjax.inputs`: decode, 16 kHz, log-mel, clips every
`eval_hop` frames). Embeddings are deterministic: dropout is off and so is random
key masking, even for an encoder that masks at inference (a DS-masked ensemble
branch), unless `mask=True` (`--mask`): then each clip's mask is drawn from its
(recording features, clip index, branch) key exactly as `coughjax.infer`
draws it for the classifier, so branch i's embeddings are the features that
classifier's head sees.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import sys
from typing import Any, Iterable, Optional, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import tqdm

from coughjax import cli
from coughjax import configs
from coughjax import files
from coughjax import infer
from coughjax import inputs
from coughjax import models
from coughjax.data.manifest import Recording

FLAGS = flags.FLAGS


@dataclasses.dataclass
class Embeddings:
  """Embeddings of several recordings.

  Attributes:
    recordings: [n, d] float32, the mean over each recording's clips.
    clips: [clips, d] float32.
    clip_recording: [clips] row of `recordings` of each clip.
    clip_index: [clips] index of each clip within its recording.
    names: [n] the recordings (file paths, or names given).
    errors: (name, message) of each input that could not be embedded.
  """
  recordings: np.ndarray
  clips: np.ndarray
  clip_recording: np.ndarray
  clip_index: np.ndarray
  names: list[str]
  errors: list[tuple[str, str]] = dataclasses.field(default_factory=list)

  def save(self, path: str | os.PathLike, *, ids: Optional[Sequence[str]] = None,
           labels: Optional[Sequence[int]] = None, **extra) -> pathlib.Path:
    """Writes the .npz described in the module docstring (strings as unicode
    arrays: np.load needs no pickle), whole or not at all; returns its path
    (`path`, with ".npz" appended if it lacks it, as np.savez does)."""
    path = files.with_suffix(path, ".npz")
    n = len(self.names)
    ids = list(self.names if ids is None else ids)
    labels = np.full(n, -1) if labels is None else np.asarray(labels, np.int64)
    if len(ids) != n or labels.shape != (n,):
      raise ValueError(f"{path}: {len(ids)} ids / {labels.shape} labels for {n} recordings")
    arrays = dict(embeddings=self.recordings, clip_embeddings=self.clips,
                  clip_recording=self.clip_recording, clip_index=self.clip_index,
                  paths=np.array(self.names, dtype=str), ids=np.array(ids, dtype=str),
                  labels=labels,
                  failed_paths=np.array([e[0] for e in self.errors], dtype=str),
                  failed_reasons=np.array([e[1] for e in self.errors], dtype=str), **extra)
    files.atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


class Encoder:
  """A frozen encoder with the input path it was trained with.

  Attributes:
    config: the encoder's resolved settings (`coughjax.models.build_encoder` input).
    module, params: the Flax encoder and its parameters.
    spec: how its inputs are made (`inputs.ClipSpec`).
    dim: embedding size d.
    branch: the branch index hashed into mask seeds (a downstream ensemble's branch).
    masked: whether clips are masked (only with `mask=True`, see the module doc).
    source: where it came from (a workdir, or "shipped:<name>").
  """

  def __init__(self, config: dict[str, Any], params: Any, spec: inputs.ClipSpec, *,
               branch: int = 0, mask: bool = False, source: str = "",
               chunk_size: int | str = "auto"):
    self.source = source
    self.config = dict(config, mask_at_eval=bool(mask))
    self.module = models.build_encoder(self.config)
    self.masked = infer.inference_mask_rate(self.module) is not None
    if mask and not self.masked:
      raise ValueError(f"{source}: mask=True, but encoder {config['name']!r} (mask_rate "
                       f"{config.get('mask_rate', 0.0)}) does not mask at inference")
    self.params = jax.device_put(params)
    self.spec = spec
    self.branch = branch
    x = jax.ShapeDtypeStruct((1, spec.clip_frames, spec.features.nfilt), jnp.float32)
    keys = (jax.ShapeDtypeStruct((1, 2), jnp.uint32), jax.ShapeDtypeStruct((1,), jnp.int32))
    embed = functools.partial(infer.embeddings, self.module, branch=branch,
                              chunk_size=chunk_size)
    try:
      self.dim = int(jax.eval_shape(embed, self.params, x, *keys).shape[-1])
    except Exception as e:  # a shape mismatch deep inside Flax: say whose
      raise ValueError(f"{source}: parameters do not fit encoder {self.config}: {e}") from e
    self._fn = functools.partial(jax.jit(embed), self.params)

  def __repr__(self) -> str:
    return (f"Encoder({self.source}: {self.config['name']}, d={self.dim}"
            f"{', masked' if self.masked else ''})")

  def embed_clips(self, waveform: np.ndarray, sample_rate: int, name: str = "waveform"
                  ) -> np.ndarray:
    """[n_clips, d] embeddings of one recording: [samples] or [samples, channels]
    (or [channels, samples]) float or integer PCM (`coughjax.audio.from_array`).

    Raises:
      AudioError naming `name`: unusable audio.
      FloatingPointError naming `name`: the encoder's output is not finite.
    """
    feats = inputs.waveform_features(waveform, sample_rate, self.spec.features, name)
    return self._one(feats, name).clips

  def embed(self, waveform: np.ndarray, sample_rate: int, name: str = "waveform"
            ) -> np.ndarray:
    """[d]: the mean of a recording's clip embeddings (see `embed_clips`)."""
    feats = inputs.waveform_features(waveform, sample_rate, self.spec.features, name)
    return self._one(feats, name).recordings[0]

  def _one(self, feats: np.ndarray, name: str) -> Embeddings:
    out = self.embed_features([feats], [name])
    if out.errors:
      raise FloatingPointError(f"{name}: {out.errors[0][1]}")
    return out

  def embed_features(self, features: Sequence[np.ndarray],
                     names: Optional[Sequence[str]] = None) -> Embeddings:
    """Embeddings of recordings given as [T, nfilt] features (`spec.features`); a
    recording whose embedding is not finite is listed in `errors` instead."""
    names = inputs.recording_names(names, len(features))
    out = inputs.run_named(self._fn, inputs.cut(features, self.spec, names), names)
    return self._collect(out.outputs, out.recording, out.clip, out.paths, out.errors)

  def embed_store(self, store, *, progress: bool = False) -> Embeddings:
    """Embeddings of every recording of a `pipeline.ClipStore` (e.g. a view of a
    corpus's pack), `inputs.MAX_BATCH` clips read at a time: memory holds one batch
    of clips, never the corpus's features. Batches and outputs are those of
    `embed_features` on the same recordings' features; a recording whose embedding
    is not finite is listed in `errors` instead."""
    if (store.clip_frames, store.frames.shape[1]) != (self.spec.clip_frames,
                                                      self.spec.features.nfilt):
      raise ValueError(f"store of {store.clip_frames}-frame clips of "
                       f"{store.frames.shape[1]} bands; {self} takes "
                       f"{self.spec.clip_frames} x {self.spec.features.nfilt}")
    hop = self.spec.hop
    starts, rec = store.clip_starts(hop)
    clip = (starts - store.offsets[rec]) // hop
    keys = (infer.store_recording_keys(store) if self.masked
            else np.zeros((len(store), 2), np.uint32))  # unused when unmasked
    out = []
    for begin in tqdm.trange(0, len(starts), inputs.MAX_BATCH, desc="embedding",
                             unit="batch", disable=not progress, mininterval=1.0):
      rows = slice(begin, begin + inputs.MAX_BATCH)
      out.append(inputs.run(self._fn, inputs.Clips(
          store.gather(starts[rows]), rec[rows], clip[rows], keys[rec[rows]])))
    out = inputs.finite_only(np.concatenate(out), rec, clip,
                             [r.path for r in store.records])
    return self._collect(out.outputs, out.recording, out.clip, out.paths, out.errors)

  def embed_files(self, paths: Iterable[str | os.PathLike], *, progress: bool = False
                  ) -> Embeddings:
    """Embeddings of audio files (one str or path is one file); a file that cannot
    be used is listed in `errors` (its path and why) and the others are embedded."""
    out = inputs.run_files(self._fn, paths, self.spec, progress=progress, desc="embedding")
    return self._collect(out.outputs, out.recording, out.clip, out.paths, out.errors)

  def _collect(self, outputs, recording, clip, names, errors) -> Embeddings:
    if not names:
      empty = np.zeros((0, self.dim), np.float32)
      return Embeddings(empty, empty, np.zeros(0, int), np.zeros(0, int), [], errors)
    means = inputs.recording_means(outputs, recording, len(names)).astype(np.float32)
    return Embeddings(means, outputs.astype(np.float32), recording, clip, list(names),
                      errors)


def _read_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  path = workdir / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: not found; is {workdir} a coughjax workdir "
                            "(python launch.py --config=configs/...)?")
  return ml_collections.ConfigDict(files.read_json(path, "the run's config", required=(
      "features", "model")))


def pretrain_encoder_config(model_cfg) -> dict[str, Any]:
  """The encoder settings of a pre-training run's `config.model`."""
  if model_cfg.name in model_cfg:
    return models.encoder_config(model_cfg, model_cfg.name)
  # Runs saved before per-encoder sub-configs kept every field flat in model;
  # build_encoder takes what the encoder declares.
  return {**model_cfg.to_dict(), "name": model_cfg.name}


def load_encoder(source: str | os.PathLike, *, branch: int = 0, mask: bool = False
                 ) -> Encoder:
  """An `Encoder` from a workdir or a shipped encoder's name.

  Args:
    source: a pre-training workdir (its best checkpoint's encoder f), a downstream
      workdir (the encoder of `branch` in its best run's best checkpoint, the run
      `coughjax.predict` uses), or the name of a shipped encoder
      (`coughjax.encoders.names()`).
    branch: which encoder of a downstream ensemble (0 or 1).
    mask: draw per-clip random key masks (keyed as in `coughjax.infer`) for an
      encoder that masks; default off, i.e. deterministic unmasked embeddings.

  Raises:
    FileNotFoundError: `source` is neither a workdir nor a shipped encoder.
    ValueError: a bad branch, or mask=True for an encoder that does not mask.
  """
  from coughjax import encoders  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(source)
  if path.is_dir():
    from coughjax import checkpoints  # pylint: disable=g-import-not-at-top
    from coughjax import predict  # pylint: disable=g-import-not-at-top
    from coughjax.models import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
    config = _read_config(path)
    spec = inputs.ClipSpec.from_config(config.features)
    chunk = config.model.get("eval_chunk_size", "auto")
    if (path / predict.ENCODERS_FILE).is_file():
      branches = files.read_json(path / predict.ENCODERS_FILE, "encoder settings",
                                 required=("encoders",))["encoders"]
      if not 0 <= branch < len(branches):
        raise ValueError(f"{path}: branch {branch} out of range; this classifier has "
                         f"{len(branches)} encoder(s) (0..{len(branches) - 1})")
      run_dir = predict.best_run(path)
      params, _ = checkpoints.restore_params(run_dir / "best")
      return Encoder(branches[branch], params[classifier_lib.encoder_param_name(branch)],
                     spec, branch=branch, mask=mask, source=f"{run_dir} branch {branch}",
                     chunk_size=chunk)
    if config.get("task") != "pretrain":
      raise ValueError(f"{path}: neither a pre-training workdir (config task "
                       f"{config.get('task')!r}) nor a downstream one (no "
                       f"{predict.ENCODERS_FILE})")
    if branch:
      raise ValueError(f"{path}: a pre-training workdir has one encoder; branch={branch}")
    params, _ = checkpoints.restore_params(path / "best")
    return Encoder(pretrain_encoder_config(config.model), params["encoder"], spec,
                   mask=mask, source=str(path), chunk_size=chunk)
  if str(source) in encoders.names():
    shipped = encoders.read(str(source))
    if branch:
      raise ValueError(f"shipped encoder {source}: has one encoder; branch={branch}")
    return Encoder(shipped.config, shipped.params, shipped.spec, mask=mask,
                   source=f"shipped:{source}")
  raise FileNotFoundError(
      f"{source}: no such workdir, and not a shipped encoder (shipped: "
      f"{', '.join(encoders.names()) or 'none'} in {encoders.directory()})")


def embed_records(encoder: Encoder, records: Sequence[Recording], *, name: str = "data",
                  workers: int = 0, progress: bool = True
                  ) -> tuple[list[Recording], Embeddings]:
  """Embeddings of a manifest's recordings, streamed from the corpus's pack
  (`coughjax.data.packed`: features computed into the feature cache with the
  encoder's feature parameters where missing, packed once per corpus), so memory
  does not grow with the corpus's features. Returns the recordings that could be
  embedded and their embeddings; skipped ones (unusable audio, a non-finite
  embedding) are in `errors`."""
  from coughjax.data import features as features_lib  # pylint: disable=g-import-not-at-top
  from coughjax.data import packed  # pylint: disable=g-import-not-at-top
  if not records:
    raise ValueError(f"{name}: no recordings")
  corpus = packed.from_cache(features_lib.FeatureCache(encoder.spec.features), records,
                             encoder.spec.clip_frames, name=name, workers=workers,
                             progress=progress)
  store = corpus.store()
  out = encoder.embed_store(store, progress=progress)
  out.errors = [(s.record.path, s.reason) for s in corpus.skipped] + out.errors
  embedded = set(out.names)
  return [r for r in store.records if r.path in embedded], out


def define_flags() -> None:
  """The command's flags; defined only when run as a command, so that importing the
  library (`coughjax.load_encoder`) adds no flags to a caller's program."""
  flags.DEFINE_string("workdir", None, "pre-training or downstream workdir, or a shipped "
                      "encoder's name", required=True)
  flags.DEFINE_alias("encoder", "workdir")
  flags.DEFINE_string("output", None, "the .npz to write", required=True)
  flags.DEFINE_integer("branch", 0, "downstream ensembles: which encoder")
  flags.DEFINE_bool("mask", False, "draw keyed random key masks (DS masking)")
  config_flags.DEFINE_config_file(
      "config", configs.path("probe"),
      "data source to embed when no files are given (--config.data.name=...)")


@cli.user_errors
def main(argv):
  cli.quiet_logging()
  paths = argv[1:]
  source_given = any(FLAGS[f].present for f in FLAGS
                     if f.startswith("config.data."))
  if paths and source_given:
    raise app.UsageError("give audio files or a data source (--config.data.*), not both")
  if not paths and not source_given:
    raise app.UsageError("give audio files, or a data source with --config.data.name=...")
  try:
    output = files.check_output(FLAGS.output, suffix=".npz")
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  # An earlier run's file must not pass for this run's result if this one fails.
  stale = output.exists()
  output.unlink(missing_ok=True)
  encoder = load_encoder(FLAGS.workdir, branch=FLAGS.branch, mask=FLAGS.mask)
  if paths:
    out = encoder.embed_files(paths, progress=True)
    ids, labels = None, None
  else:
    from coughjax import data  # pylint: disable=g-import-not-at-top
    cfg = FLAGS.config
    records, out = embed_records(encoder, data.get_manifest(cfg.data),
                                 name=cfg.data.name, workers=cfg.data.workers)
    ids = [r.participant_id for r in records]
    labels = [-1 if r.label is None else r.label for r in records]
  for path, message in out.errors:
    print(f"{path}\t{message}", file=sys.stderr)
  if out.names:
    out.save(output, ids=ids, labels=labels)
    print(f"{output}: {len(out.names)} recordings, {len(out.clips)} clips, "
          f"d = {encoder.dim} ({encoder})")
  else:
    print(f"nothing embedded; {output} not written"
          + (" (the earlier file there was removed)" if stale else ""), file=sys.stderr)
  if paths and out.errors:
    sys.exit(f"{len(out.errors)} of {len(paths)} files could not be embedded")
  if not out.names:
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
