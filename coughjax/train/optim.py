"""Optimiser: Adam (+ optional clipping) with PyTorch's ReduceLROnPlateau.

The paper trains with Adam (lr 1e-3) and PyTorch's `ReduceLROnPlateau` on the
validation loss. The plateau logic here is PyTorch's, step for step (`plateau_update`
is tested against `torch.optim.lr_scheduler.ReduceLROnPlateau`); optax's
`contrib.reduce_on_plateau` differs from it (it cuts when the count of bad epochs
*reaches* `patience`, one epoch before PyTorch, which cuts when the count *exceeds* it).

The plateau state lives in the TrainState and is updated once per epoch from the
validation loss; its `scale` multiplies Adam's updates inside the pure train step
(`TrainState.apply_gradients`), which for Adam is the same as multiplying the
learning rate.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

# PyTorch's ReduceLROnPlateau(eps=1e-8): a cut smaller than this is not made.
PLATEAU_EPS = 1e-8


def make_optimizer(cfg, trainable_mask: Optional[Any] = None
                   ) -> optax.GradientTransformation:
  """Adam at `cfg.learning_rate` (the plateau scale is applied by the train step).

  Args:
    cfg: `config.optim` (learning_rate, grad_clip: global-norm clip, 0 = off).
    trainable_mask: optional pytree of bools like the params; False leaves get no
      update at all (frozen encoders).
  """
  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  tx = optax.chain(*parts, optax.adam(cfg.learning_rate))
  if trainable_mask is not None:
    labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable_mask)
    tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
  return tx


class PlateauState(NamedTuple):
  """ReduceLROnPlateau's state (PyTorch's fields), as arrays for a TrainState."""
  best: jax.Array        # float32: best validation loss so far (+inf at first)
  bad_epochs: jax.Array  # int32: epochs since `best` improved (num_bad_epochs)
  cooldown: jax.Array    # int32: epochs of cooldown left (cooldown_counter)
  scale: jax.Array       # float32: learning rate / cfg.learning_rate


def plateau_init() -> PlateauState:
  return PlateauState(best=jnp.array(jnp.inf, jnp.float32),
                      bad_epochs=jnp.array(0, jnp.int32),
                      cooldown=jnp.array(0, jnp.int32),
                      scale=jnp.array(1.0, jnp.float32))


def plateau_update(cfg, state: PlateauState, value) -> PlateauState:
  """One `ReduceLROnPlateau.step(value)` of PyTorch (mode "min", threshold "rel").

  Args:
    cfg: `config.optim`: learning_rate, plateau_factor, plateau_patience,
      plateau_rtol (torch `threshold`), plateau_cooldown, min_lr_scale (torch
      `min_lr` / learning_rate).
    state: the current state.
    value: this epoch's validation loss (a NaN counts as a bad epoch, as in torch).

  Returns:
    The new state; its `scale` times `cfg.learning_rate` is the next learning rate.
  """
  value = jnp.asarray(value, jnp.float32)
  better = value < state.best * (1.0 - cfg.plateau_rtol)
  best = jnp.where(better, value, state.best)
  bad = jnp.where(better, 0, state.bad_epochs + 1)
  in_cooldown = state.cooldown > 0
  cooldown = jnp.where(in_cooldown, state.cooldown - 1, state.cooldown)
  bad = jnp.where(in_cooldown, 0, bad)  # bad epochs in cooldown are ignored
  cut = bad > cfg.plateau_patience
  new_scale = jnp.maximum(state.scale * cfg.plateau_factor, cfg.min_lr_scale)
  # torch: the lr changes only if old_lr - new_lr > eps.
  changes = cut & ((state.scale - new_scale) * cfg.learning_rate > PLATEAU_EPS)
  return PlateauState(
      best=best,
      bad_epochs=jnp.where(cut, 0, bad).astype(jnp.int32),
      cooldown=jnp.where(cut, cfg.plateau_cooldown, cooldown).astype(jnp.int32),
      scale=jnp.where(changes, new_scale, state.scale).astype(jnp.float32))


def scale_updates(updates, scale: jax.Array):
  """Multiplies every update by the plateau scale (Adam's lr is linear in it)."""
  return jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)


def learning_rate(cfg, state: PlateauState) -> float:
  """The learning rate in force with plateau `state` (host float)."""
  return cfg.learning_rate * float(jax.device_get(state.scale))
