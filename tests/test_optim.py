"""ReduceLROnPlateau against PyTorch's, and the plateau scale inside the train step."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch

from coughjax.train import optim
from coughjax.train import trainer


def _cfg(**overrides):
  cfg = dict(learning_rate=1e-3, grad_clip=0.0, plateau_factor=0.1, plateau_patience=3,
             plateau_rtol=1e-4, plateau_cooldown=0, min_lr_scale=0.0)
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def _torch_lrs(cfg, losses):
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.Adam([param], lr=cfg.learning_rate)
  sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
      opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
      threshold=cfg.plateau_rtol, threshold_mode="rel", cooldown=cfg.plateau_cooldown,
      min_lr=cfg.min_lr_scale * cfg.learning_rate)
  lrs = []
  for loss in losses:
    sched.step(loss)
    lrs.append(opt.param_groups[0]["lr"])
  return lrs


def _our_lrs(cfg, losses):
  state, lrs = optim.plateau_init(), []
  for loss in losses:
    state = optim.plateau_update(cfg, state, loss)
    lrs.append(optim.learning_rate(cfg, state))
  return lrs


_NOISY = list(2.0 + 0.05 * np.random.default_rng(0).standard_normal(60)
              - np.linspace(0, 0.3, 60))
SEQUENCES = {
    "improving": list(np.linspace(3.0, 1.0, 30)),
    "flat": [2.0] * 40,
    # Improvements smaller than the relative threshold count as bad epochs.
    "within_threshold": [2.0 * (1 - 5e-5) ** i for i in range(40)],
    "noisy": _NOISY,
    "with_nan": [2.0, 1.9, float("nan"), 1.9, 1.9, 1.9, 1.9, 1.8, 1.8, 1.8, 1.8, 1.8],
}
CONFIGS = {
    "defaults": _cfg(),
    "patience_0": _cfg(plateau_patience=0),
    "cooldown": _cfg(plateau_patience=2, plateau_cooldown=3),
    "min_lr": _cfg(plateau_patience=1, plateau_factor=0.5, min_lr_scale=0.05),
    "paper": _cfg(plateau_patience=10),
}


@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
@pytest.mark.parametrize("seq_name", sorted(SEQUENCES))
def test_plateau_matches_torch(cfg_name, seq_name):
  cfg, losses = CONFIGS[cfg_name], SEQUENCES[seq_name]
  want = _torch_lrs(cfg, losses)
  got = _our_lrs(cfg, losses)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_plateau_cuts_after_patience_is_exceeded():
  """PyTorch (and so coughjax) cuts at the (patience + 1)-th bad epoch; optax's
  reduce_on_plateau cuts one epoch earlier."""
  cfg = _cfg(plateau_patience=2)
  lrs = _our_lrs(cfg, [1.0, 1.0, 1.0, 1.0, 1.0])
  assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4, 1e-4])


def test_train_step_applies_plateau_scale():
  """A state whose plateau scale is s moves its parameters like Adam at lr * s."""
  cfg = _cfg()
  params = {"w": jnp.arange(4.0)}
  grads = {"w": jnp.array([0.5, -1.0, 2.0, 0.0])}
  state = trainer.TrainState.create(apply_fn=None, params=params,
                                    tx=optim.make_optimizer(cfg))
  scaled = state.replace(plateau=state.plateau._replace(scale=jnp.float32(0.1)))
  got = jax.jit(lambda s: s.apply_gradients(grads=grads))(scaled)
  ref_tx = optax.adam(cfg.learning_rate * 0.1)
  updates, _ = ref_tx.update(grads, ref_tx.init(params), params)
  want = optax.apply_updates(params, updates)
  np.testing.assert_allclose(got.params["w"], want["w"], rtol=1e-6)
  assert int(got.step) == 1
  # Frozen leaves (multi_transform) stay put whatever the scale.
  frozen = trainer.TrainState.create(
      apply_fn=None, params=params,
      tx=optim.make_optimizer(cfg, trainable_mask={"w": False}))
  np.testing.assert_array_equal(frozen.apply_gradients(grads=grads).params["w"], params["w"])
