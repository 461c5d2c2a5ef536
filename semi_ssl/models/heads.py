"""Projection / prediction MLPs, SwAV-style prototypes and DINOHead's parts in Flax NNX.

Linear classifiers are plain ``nnx.Linear`` layers on the backbone features.
"""

import functools
from collections.abc import Callable

from flax import nnx
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from semi_ssl.models.resnet import batch_norm
from semi_ssl.ops.normalize import l2_normalize


class MLP(nnx.Module):
  """(Linear -> [BN] -> activation) x (num_layers - 1), then Linear.

  Linears followed by a BatchNorm have no bias; biases start at 0, kernels from
  ``kernel_init``. Hidden layers compute in ``dtype``; the output is float32.
  """

  def __init__(
    self,
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    *,
    num_layers: int,
    batch_norm: bool,
    rngs: nnx.Rngs,
    dtype: DTypeLike = jnp.float32,
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
    kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
  ):
    if num_layers < 1:
      raise ValueError(f'num_layers must be >= 1, got {num_layers}.')
    dims = [in_dim] + [hidden_dim] * (num_layers - 1)
    linear_bn = functools.partial(_LinearBN, rngs=rngs, dtype=dtype, kernel_init=kernel_init)
    self.hidden = nnx.List(
      [linear_bn(d_in, d_out, use_bn=batch_norm) for d_in, d_out in zip(dims[:-1], dims[1:])]
    )
    self.out = linear_bn(dims[-1], out_dim, use_bn=False)
    self.activation = activation

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, in_dim] -> [B, out_dim] float32."""
    for layer in self.hidden:
      x = self.activation(layer(x, train=train))
    return self.out(x, train=train).astype(jnp.float32)


class _LinearBN(nnx.Module):
  """Linear (bias only without BN) optionally followed by float32 BatchNorm."""

  def __init__(
    self,
    in_dim: int,
    out_dim: int,
    *,
    use_bn: bool,
    rngs: nnx.Rngs,
    dtype: DTypeLike,
    kernel_init: nnx.Initializer,
    bn_bias: bool = True,
  ):
    self.linear = nnx.Linear(
      in_dim, out_dim, use_bias=not use_bn, dtype=dtype, kernel_init=kernel_init, rngs=rngs
    )
    self.bn = batch_norm(out_dim, rngs=rngs, use_bias=bn_bias) if use_bn else None
    self.dtype = dtype

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, in_dim] -> [B, out_dim] in ``dtype``."""
    x = self.linear(x)
    if self.bn is not None:
      x = self.bn(x, use_running_average=not train)
    return x.astype(self.dtype)


class ProjectionHead(nnx.Module):
  """SimCLR's projection head: `num_layers` x (bias-free Linear -> BatchNorm), ReLU after all
  but the last, whose BatchNorm has no bias (github.com/google-research/simclr at 383d414,
  tf2/model.py lines 157-213, `ProjectionHead`, proj_head_mode 'nonlinear'; its hidden width
  is the input's). With `keep_layers` only the first that many layers are built, each with its
  ReLU: the head up to a middle layer, which SimCLRv2 fine-tunes from (`ft_proj_selector`)."""

  def __init__(
    self,
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    *,
    num_layers: int,
    rngs: nnx.Rngs,
    keep_layers: int | None = None,
    dtype: DTypeLike = jnp.float32,
  ):
    keep_layers = num_layers if keep_layers is None else keep_layers
    if not 1 <= keep_layers <= num_layers:
      raise ValueError(f'keep_layers must be in [1, {num_layers}], got {keep_layers}.')
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    self.layers = nnx.List(
      [
        _LinearBN(
          dims[i],
          dims[i + 1],
          use_bn=True,
          bn_bias=i < num_layers - 1,
          rngs=rngs,
          dtype=dtype,
          kernel_init=nnx.initializers.lecun_normal(),
        )
        for i in range(keep_layers)
      ]
    )
    self.num_layers = num_layers
    self.out_dim = dims[keep_layers]

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, in_dim] -> [B, out_dim] float32 (or the kept layers' width)."""
    for i, layer in enumerate(self.layers):
      x = layer(x, train=train)
      x = jax.nn.relu(x) if i < self.num_layers - 1 else x
    return x.astype(jnp.float32)


class Prototypes(nnx.Module):
  """Bias-free linear layer on l2-normalised inputs and weights (SwAV, Suave).

  The kernel has shape [num_prototypes, in_dim]; each row is one prototype, drawn from
  ``kernel_init``. With ``learn_norm``, each normalised prototype is scaled by its own learnt
  ``magnitude`` [num_prototypes, 1], starting at 1: DINOHead's weight-normalised last layer
  (``nn.utils.weight_norm``: ``weight_g``, ``weight_v``) with ``norm_last_layer=False``. Its
  two dimensions put it under weight decay, as DINO's ``weight_g`` (utils.get_params_groups
  exempts only biases and one-dimensional parameters).
  """

  def __init__(
    self,
    in_dim: int,
    num_prototypes: int,
    *,
    rngs: nnx.Rngs,
    learn_norm: bool = False,
    kernel_init: nnx.Initializer = nnx.initializers.normal(1.0),
  ):
    self.kernel = nnx.Param(kernel_init(rngs.params(), (num_prototypes, in_dim)))
    self.magnitude = nnx.Param(jnp.ones((num_prototypes, 1))) if learn_norm else None

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, in_dim] -> [B, num_prototypes] float32 cosine scores in [-1, 1], each times its
    prototype's magnitude with ``learn_norm``."""
    x = l2_normalize(x.astype(jnp.float32))
    kernel = l2_normalize(self.kernel[...])
    if self.magnitude is not None:
      kernel = self.magnitude[...] * kernel
    return x @ kernel.T


# DINOHead (github.com/facebookresearch/dino at 7c446df, vision_transformer.py lines 257-291;
# the same in github.com/pietroastolfi/suave-daino src/vision_transformer.py lines 297-355): an
# MLP of Linear -> GELU (exact, torch's nn.GELU) without BatchNorm (use_bn=False), its weights
# trunc_normal_(std=.02) (cut at +-2, i.e. 100 std: a normal) and biases 0, then the
# l2-normalised bottleneck -> weight-normalised prototypes, whose direction `weight_v` keeps
# torch's nn.Linear init, U(-1/sqrt(in_dim), 1/sqrt(in_dim)) (kaiming_uniform, a=sqrt(5)).
DINO_MLP = dict(
  batch_norm=False,
  activation=functools.partial(jax.nn.gelu, approximate=False),
  kernel_init=nnx.initializers.normal(0.02),
)
DINO_PROTOTYPES_INIT = nnx.initializers.variance_scaling(
  1 / 3, 'fan_in', 'uniform', in_axis=-1, out_axis=-2
)
