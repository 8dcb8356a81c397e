"""GRU encoder f (the paper's recurrent baseline): clips -> last hidden state.

Stacked like PyTorch's `nn.GRU(batch_first=True, num_layers, dropout)`, with its
parameters and update rule exactly (r multiplies W_hn h + b_hn; dropout acts on the
outputs of every layer but the last). Per layer `layer_{i}`:

  kernel_ih [in, 3d]  = torch weight_ih_l{i}.T   (gates r | z | n side by side)
  kernel_hh [d, 3d]   = torch weight_hh_l{i}.T
  bias_ih   [3d]      = torch bias_ih_l{i}
  bias_hh   [3d]      = torch bias_hh_l{i}

Computed as cuDNN and oneDNN do: the bottom layer's input projections of all time
steps in one [B*T, in] x [in, 3d] matmul before the recurrence, then one fused
[B, d] x [d, 3d] matmul per step for the three recurrent gates. Beyond that, every
layer advances in the same scan over time (`stacked_recurrence`): step t of layer i
feeds step t of layer i + 1 while both are in cache, so no layer's output sequence
is written out and read back, and the loop runs T iterations rather than L * T.

Training differentiates the recurrence by hand (`_stacked_fwd`, `_stacked_bwd`)
rather than through the scan: the forward pass stores only each step's incoming
states (L x [T, B, d]); the backward scan recomputes one step's gates at a time, in
cache, and carries dL/dh and the weight gradients, as cuDNN does. Under a bfloat16
compute dtype the parameters stay float32: they enter the recurrence as float32 and
are cast inside it, and the backward pass carries dL/dh and accumulates the weight
gradients in float32 (bf16 matmuls with float32 accumulation), returning float32
gradients for the float32 parameters. Forward-mode differentiation (`jax.jvp`) is
not available through a `jax.custom_vjp`; calling it says so.

Its per-step cost is small, so on CPU the train step runs the whole batch at once;
inference runs over 256-clip chunks, advances two independent halves of each chunk
per scan iteration (`eval_streams`; independent ops that XLA:CPU may run on both
cores) and unrolls 4 steps per iteration (`eval_unroll`): the GRU's entry in
`platform.CPU`, which "auto" settings read. The outputs do not change: each clip's
recurrence is computed alone either way. Timings that led to these choices are in
benchmarks/README.md.

Dropout between layers is per clip (`randomness.keep_mask` with the clips' global
ids), so a clip's dropout does not depend on the batch, chunk or device.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from coughjax.models import platform
from coughjax.models import randomness
from coughjax.models.registry import register


def _stacked_orthogonal(num: int):
  """Init of a [d, num * d] kernel as `num` independent orthogonal [d, d] blocks
  (each gate's recurrent matrix orthogonal, as flax's GRUCell initialises them)."""
  orthogonal = nn.initializers.orthogonal()

  def init(key, shape, dtype=jnp.float32):
    d = shape[1] // num
    return jnp.concatenate([orthogonal(k, (shape[0], d), dtype)
                            for k in jax.random.split(key, num)], axis=1)

  return init


def _cell(h, gx, w_hh, b_hh):
  """One step of one layer: h [b, d], gx [b, 3d] -> (h', (r, z, n, gh_n))."""
  d = h.shape[-1]
  gh = h @ w_hh + b_hh  # the three recurrent gates in one matmul
  # r and z in one [b, 2d] sigmoid, as tanh (one transcendental fewer per entry than
  # XLA:CPU's logistic).
  rz = 0.5 * jnp.tanh(0.5 * (gx[:, :2 * d] + gh[:, :2 * d])) + 0.5
  r, z = rz[:, :d], rz[:, d:]
  gh_n = gh[:, 2 * d:]
  n = jnp.tanh(gx[:, 2 * d:] + r * gh_n)
  return (1 - z) * n + z * h, (r, z, n, gh_n)


def _dropped(x, keep, scale):
  """Inverted dropout with a given keep mask (None: none)."""
  return x if keep is None else jnp.where(keep, x * scale, 0)


def _stack_step(hs, gx0, keep, scale, recurrent, inputs):
  """One time step up the stack: returns every layer's new state and gates."""
  new, gates = [], []
  for i, (h, (w_hh, b_hh)) in enumerate(zip(hs, recurrent)):
    if i:  # the layer below's new state, after dropout, is this layer's input
      w_ih, b_ih = inputs[i - 1]
      gx = _dropped(new[-1], keep and keep[i - 1], scale) @ w_ih + b_ih
    else:
      gx = gx0
    h, parts = _cell(h, gx, w_hh, b_hh)
    new.append(h)
    gates.append(parts)
  return tuple(new), gates


def _zeros_states(gates_x, num_layers):
  return (jnp.zeros((gates_x.shape[1], gates_x.shape[2] // 3), gates_x.dtype),) * num_layers


def _cast(tree, dtype):
  return jax.tree.map(lambda a: a.astype(dtype), tree)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def stacked_recurrence(gates_x: jax.Array, recurrent: tuple, inputs: tuple,
                       keep: Optional[tuple], scale: float = 1.0, unroll: int = 1,
                       streams: int = 1) -> jax.Array:
  """A stack of GRU layers from h = 0, all layers advanced in one scan over time.

  Computes in `gates_x`'s dtype (the compute dtype); the weights may be float32
  master parameters, cast inside, so that their gradients are float32 too.

  Args:
    gates_x: [T, B, 3d] the bottom layer's input gates x_t W_ih + b_ih (r | z | n).
    recurrent: per layer, (w_hh [d, 3d], b_hh [3d]).
    inputs: per layer above the bottom one, (w_ih [d, 3d], b_ih [3d]).
    keep: per layer above the bottom one, the [T, B, d] boolean dropout keep mask of
      its input, or None without dropout.
    scale: the factor on kept inputs, 1 / (1 - rate) (0 when every input is dropped).
    unroll: time steps per scan iteration (inference only).
    streams: batch slices advanced independently per scan iteration (inference only;
      1 when B does not split evenly).

  Returns:
    [B, d] in the compute dtype, the top layer's state after the last step.

  Its gradient is computed as cuDNN does rather than by differentiating the scan:
  see `_stacked_fwd` and `_stacked_bwd`.
  """
  recurrent, inputs = _cast((recurrent, inputs), gates_x.dtype)
  num_layers, b = len(recurrent), gates_x.shape[1]
  streams = streams if b % streams == 0 else 1
  # One stream is not split: jax2onnx (ONNX export) cannot split a symbolic batch.
  split = lambda a: (a,) if streams == 1 else tuple(jnp.split(a, streams, axis=1))
  xs = (split(gates_x), tuple(split(k) for k in keep) if keep else None)

  def step(carry, xs_t):
    gx0, keep_t = xs_t
    carry = tuple(_stack_step(hs, gx0[j], keep_t and tuple(k[j] for k in keep_t), scale,
                              recurrent, inputs)[0]
                  for j, hs in enumerate(carry))
    return carry, None

  h0 = (_zeros_states(gates_x[:, :b // streams], num_layers),) * streams
  last, _ = jax.lax.scan(step, h0, xs, unroll=unroll)
  return jnp.concatenate([hs[-1] for hs in last], axis=0)


def _stacked_fwd(gates_x, recurrent, inputs, keep, scale, unroll, streams):
  """The differentiated forward pass: a plain scan that keeps each step's incoming
  states h_{t-1} of every layer (L x [T, B, d]), the only activations stored."""
  del unroll, streams
  rec_c, inp_c = _cast((recurrent, inputs), gates_x.dtype)

  def step(hs, xs_t):
    gx0, keep_t = xs_t
    return _stack_step(hs, gx0, keep_t, scale, rec_c, inp_c)[0], hs

  last, prevs = jax.lax.scan(step, _zeros_states(gates_x, len(recurrent)), (gates_x, keep))
  return last[-1], (gates_x, recurrent, inputs, keep, prevs)


def _stacked_bwd(scale, unroll, streams, residuals, g):
  """Backward scan over time: each step recomputes its gates from the stored states
  (in cache, one step at a time), then walks the stack top-down. It carries dL/dh of
  every layer and the weight gradients (each step adds its [d, b] x [b, 3d] products),
  all in float32, and emits only the bottom layer's input-gate gradients, which are
  `gates_x`'s. The weight gradients come back float32, the dtype of the weights."""
  del unroll, streams
  gates_x, recurrent, inputs, keep, prevs = residuals
  f32, compute = jnp.float32, gates_x.dtype
  rec_c, inp_c = _cast((recurrent, inputs), compute)
  num_layers = len(recurrent)
  zeros = lambda tree: jax.tree.map(lambda a: jnp.zeros(a.shape, f32), tree)

  def mm(a, b):  # a matmul in the compute dtype, accumulated and returned in float32
    return jnp.matmul(a.astype(compute), b.astype(compute), preferred_element_type=f32)

  def step(carry, xs_t):
    dhs, d_rec, d_inp = carry
    gx0, prev, keep_t = xs_t
    new, gates = _stack_step(prev, gx0, keep_t, scale, rec_c, inp_c)
    dhs, d_rec, d_inp = list(dhs), list(d_rec), list(d_inp)
    from_above = 0
    for i in reversed(range(num_layers)):
      (r, z, n, gh_n), h = _cast((gates[i], prev[i]), f32)
      dh = dhs[i] + from_above  # dL/dh_t of layer i
      dn = dh * (1 - z) * (1 - n * n)  # dL/d(pre-activations), gate by gate
      dr = dn * gh_n * r * (1 - r)
      dz = dh * (h - n) * z * (1 - z)
      dgx = jnp.concatenate([dr, dz, dn], axis=-1)
      dgh = jnp.concatenate([dr, dz, dn * r], axis=-1)
      dhs[i] = dh * z + mm(dgh, rec_c[i][0].T)  # dL/dh_{t-1} through this step
      d_rec[i] = (d_rec[i][0] + mm(prev[i].T, dgh), d_rec[i][1] + dgh.sum(0))
      if i:
        k = keep_t and keep_t[i - 1]
        x_in = _dropped(new[i - 1], k, scale)
        d_inp[i - 1] = (d_inp[i - 1][0] + mm(x_in.T, dgx), d_inp[i - 1][1] + dgx.sum(0))
        from_above = _dropped(mm(dgx, inp_c[i - 1][0].T), k, scale)
    return (tuple(dhs), tuple(d_rec), tuple(d_inp)), dgx.astype(compute)

  dhs = tuple(jnp.zeros(g.shape, f32) for _ in range(num_layers - 1)) + (g.astype(f32),)
  init = (dhs, zeros(recurrent), zeros(inputs))
  (_, d_rec, d_inp), dgates_x = jax.lax.scan(step, init, (gates_x, prevs, keep),
                                             reverse=True)
  # The primals' dtypes: float32 for float32 master weights (no rounding).
  d_rec, d_inp = (jax.tree.map(lambda a, p: a.astype(p.dtype), d, primal)
                  for d, primal in ((d_rec, recurrent), (d_inp, inputs)))
  keep_ct = None if keep is None else tuple(None for _ in keep)
  return dgates_x, d_rec, d_inp, keep_ct


stacked_recurrence.defvjp(_stacked_fwd, _stacked_bwd)


def _is_count(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


class _LayerParams(nn.Module):
  """One layer's parameters, laid out as torch's nn.GRU layer (see the module doc)."""

  d_model: int
  in_features: int

  @nn.compact
  def __call__(self):
    d = self.d_model
    return (self.param("kernel_ih", nn.initializers.lecun_normal(), (self.in_features, 3 * d)),
            self.param("kernel_hh", _stacked_orthogonal(3), (d, 3 * d)),
            self.param("bias_ih", nn.initializers.zeros, (3 * d,)),
            self.param("bias_hh", nn.initializers.zeros, (3 * d,)))


@register("gru")
class GRU(nn.Module):
  """GRU encoder: log-mel clips [batch, time, mel] -> h [batch, d_model].

  Attributes:
    d_model: hidden size d of every layer.
    num_layers: stacked GRU layers.
    dropout: rate between layers (as torch nn.GRU's `dropout`), its keep masks drawn
      per clip by `randomness.keep_mask` from the 'dropout' RNG stream.
    eval_unroll: time steps per scan iteration at inference, an int >= 1 or "auto"
      (`platform.settings("gru").scan_unroll`: 4 on CPU, 1 on GPU/TPU).
    eval_streams: batch slices advanced together at inference, an int >= 1 or "auto"
      (`platform.settings("gru").scan_streams`: 2 on CPU, 1 on GPU/TPU).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32.
  """

  d_model: int = 64
  num_layers: int = 2
  dropout: float = 0.2
  eval_unroll: int | str = platform.AUTO
  eval_streams: int | str = platform.AUTO
  dtype: Any = jnp.float32

  def _check_settings(self) -> None:
    for name in ("d_model", "num_layers", "eval_unroll", "eval_streams"):
      value = getattr(self, name)
      auto = name.startswith("eval_")  # these two may be "auto"
      if not (_is_count(value) and value >= 1) and not (auto and platform.is_auto(value)):
        allowed = "'auto' or an int >= 1" if auto else "an int >= 1"
        raise ValueError(f"GRU {name} (config model.gru.{name}) must be {allowed}, "
                         f"got {value!r}")
    if not 0.0 <= self.dropout <= 1.0:  # also rejects NaN
      raise ValueError(f"GRU dropout (config model.gru.dropout) must be in [0, 1], got "
                       f"{self.dropout!r}")

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, mask: Optional[jax.Array] = None,
               clip_ids: Optional[jax.Array] = None) -> jax.Array:
    """Encodes clips.

    Args:
      x: [batch, time, mel] log-mel clips.
      train: enables dropout between layers (RNG stream 'dropout').
      mask: ignored. A GRU has no attention to mask; the argument exists so that
        every encoder shares one call signature.
      clip_ids: [batch] int, each clip's global id, which keys its dropout (default
        0, 1, ..., batch - 1).

    Returns:
      h: [batch, d_model], the top layer's hidden state after the last step.
    """
    del mask
    self._check_settings()
    b, t, width = x.shape
    # float32 parameters; the recurrence casts its weights to the compute dtype
    # itself, so that their gradients come back float32 (see the module doc).
    params = [_LayerParams(self.d_model, width if i == 0 else self.d_model,
                           name=f"layer_{i}")() for i in range(self.num_layers)]
    w_ih, _, b_ih, _ = _cast(params[0], self.dtype)
    # Every step's bottom-layer input gates in one [T*B, in] x [in, 3d] matmul (2-D,
    # so that its gradient for the kernel is a plain matmul too).
    x = x.astype(self.dtype).swapaxes(0, 1).reshape(t * b, width)
    gates_x = (x @ w_ih + b_ih).reshape(t, b, -1)
    keep, scale = None, 1.0
    if train and self.dropout > 0 and self.num_layers > 1:
      rng = self.make_rng("dropout")
      clip_ids = randomness.default_clip_ids(b, clip_ids)
      keep = tuple(randomness.keep_mask(jax.random.fold_in(rng, i), clip_ids,
                                        (t, b, self.d_model), self.dropout, axis=1)
                   for i in range(1, self.num_layers))
      scale = 0.0 if self.dropout == 1 else 1 / (1 - self.dropout)
    unroll, streams = 1, 1
    if not train:
      unroll = platform.resolve_setting(self.eval_unroll, "scan_unroll", "gru")
      streams = platform.resolve_setting(self.eval_streams, "scan_streams", "gru")
    try:
      return stacked_recurrence(
          gates_x, tuple((w_hh, b_hh) for _, w_hh, _, b_hh in params),
          tuple((w_ih, b_ih) for w_ih, _, b_ih, _ in params[1:]), keep, scale, unroll,
          streams)
    except TypeError as e:
      if "forward-mode" not in str(e):
        raise
      raise TypeError(
          "GRU: forward-mode differentiation (jax.jvp, jax.jacfwd, jax.linearize, "
          "jax.hessian) is not supported: the recurrence's gradient is a hand-written "
          "reverse-mode rule (jax.custom_vjp). Use reverse mode (jax.grad, jax.vjp, "
          "jax.jacrev).") from e
