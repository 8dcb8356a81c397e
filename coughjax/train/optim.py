"""Optimiser: Adam (+ optional clipping) with a learning rate cut on plateaus.

The paper trains with Adam (lr 1e-3) and PyTorch's ReduceLROnPlateau on the monitored
loss. Here `optax.contrib.reduce_on_plateau` holds the plateau logic, but it is fed
the *validation* loss once per epoch (not the training loss every step), and its
scale is applied by rewriting the injected learning rate of the Adam chain.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax
from optax import contrib


def make_optimizer(cfg, trainable_mask: Optional[Any] = None
                   ) -> optax.GradientTransformation:
  """Adam with `cfg.learning_rate` injected as a hyper-parameter.

  Args:
    cfg: `config.optim` (learning_rate, grad_clip: global-norm clip, 0 = off).
    trainable_mask: optional pytree of bools like the params; False leaves get no
      update at all (frozen encoders).
  """

  def chain(learning_rate):
    parts = []
    if cfg.grad_clip > 0:
      parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    return optax.chain(*parts, optax.adam(learning_rate))

  tx = optax.inject_hyperparams(chain)(learning_rate=cfg.learning_rate)
  if trainable_mask is not None:
    labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable_mask)
    tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
  return tx


def make_plateau(cfg) -> optax.GradientTransformationExtraArgs:
  """ReduceLROnPlateau with PyTorch's defaults (factor 0.1, patience 10, rel 1e-4)."""
  return contrib.reduce_on_plateau(factor=cfg.plateau_factor,
                                   patience=cfg.plateau_patience,
                                   rtol=cfg.plateau_rtol, cooldown=cfg.plateau_cooldown,
                                   min_scale=cfg.min_lr_scale)


def plateau_step(plateau, plateau_state, value: float):
  """Feeds one validation loss; returns the new state (its `.scale` multiplies lr)."""
  _, state = plateau.update(updates={}, state=plateau_state, value=jnp.asarray(value))
  return state


def _inject_state(opt_state):
  """The InjectHyperparamsState inside a (possibly multi-transformed) optimiser state."""
  if hasattr(opt_state, "hyperparams"):
    return opt_state
  if hasattr(opt_state, "inner_states"):  # optax.multi_transform
    return _inject_state(opt_state.inner_states["train"].inner_state)
  raise TypeError(f"no injected hyper-parameters in {type(opt_state).__name__}")


def set_learning_rate(opt_state, value: jax.Array):
  """Sets the injected learning rate in place; `value` must be laid out like the
  current one (e.g. replicated for a pmapped state)."""
  hp = _inject_state(opt_state).hyperparams
  if jnp.shape(value) != jnp.shape(hp["learning_rate"]):
    raise ValueError(f"learning rate of shape {jnp.shape(value)} for a state holding "
                     f"{jnp.shape(hp['learning_rate'])}")
  hp["learning_rate"] = value
  return opt_state


def learning_rate(opt_state) -> float:
  return float(jnp.ravel(_inject_state(opt_state).hyperparams["learning_rate"])[0])
