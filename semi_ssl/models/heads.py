"""Projection / prediction MLPs and SwAV-style prototypes in Flax NNX.

Linear classifiers are plain ``nnx.Linear`` layers on the backbone features.
"""

from flax import nnx
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from semi_ssl.models.resnet import batch_norm
from semi_ssl.ops.normalize import l2_normalize


class MLP(nnx.Module):
  """(Linear -> [BN] -> ReLU) x (num_layers - 1), then Linear.

  Linears followed by a BatchNorm have no bias. Hidden layers compute in ``dtype``; the
  output is float32.
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
  ):
    if num_layers < 1:
      raise ValueError(f'num_layers must be >= 1, got {num_layers}.')
    dims = [in_dim] + [hidden_dim] * (num_layers - 1)
    self.hidden = nnx.List(
      [
        _LinearBN(d_in, d_out, use_bn=batch_norm, rngs=rngs, dtype=dtype)
        for d_in, d_out in zip(dims[:-1], dims[1:])
      ]
    )
    self.out = _LinearBN(dims[-1], out_dim, use_bn=False, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, in_dim] -> [B, out_dim] float32."""
    for layer in self.hidden:
      x = jax.nn.relu(layer(x, train=train))
    return self.out(x, train=train).astype(jnp.float32)


class _LinearBN(nnx.Module):
  """Linear (bias only without BN) optionally followed by float32 BatchNorm."""

  def __init__(self, in_dim: int, out_dim: int, *, use_bn: bool, rngs: nnx.Rngs, dtype: DTypeLike):
    self.linear = nnx.Linear(in_dim, out_dim, use_bias=not use_bn, dtype=dtype, rngs=rngs)
    self.bn = batch_norm(out_dim, rngs=rngs) if use_bn else None
    self.dtype = dtype

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, in_dim] -> [B, out_dim] in ``dtype``."""
    x = self.linear(x)
    if self.bn is not None:
      x = self.bn(x, use_running_average=not train)
    return x.astype(self.dtype)


class Prototypes(nnx.Module):
  """Bias-free linear layer on l2-normalised inputs and weights (SwAV, Suave).

  The kernel has shape [num_prototypes, in_dim]; each row is one prototype.
  """

  def __init__(self, in_dim: int, num_prototypes: int, *, rngs: nnx.Rngs):
    self.kernel = nnx.Param(jax.random.normal(rngs.params(), (num_prototypes, in_dim)))

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, in_dim] -> [B, num_prototypes] float32 cosine scores in [-1, 1]."""
    x = l2_normalize(x.astype(jnp.float32))
    return x @ l2_normalize(self.kernel[...]).T
