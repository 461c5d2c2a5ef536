"""ResNet v1.5 backbones (torchvision layout) in Flax NNX.

Every module takes an explicit ``train`` keyword and passes
``use_running_average=not train`` to its BatchNorms, so a model can be
``nnx.split`` into (graphdef, params, batch_stats) and merged back inside a pure
jitted function. Convolutions compute in ``dtype`` (e.g. bfloat16) with float32
parameters; BatchNorm normalises in float32 and the pooled features are float32. With
``remat`` each residual block's activations are recomputed in the backward pass instead of
kept (``nnx.remat``, i.e. ``jax.checkpoint``): less memory for one more forward pass.

Backbones (``create_backbone``):
  resnet18:    BasicBlock, stages [2, 2, 2, 2], widths 64/128/256/512 * width.
  resnet50:    Bottleneck, stages [3, 4, 6, 3], widths 64/128/256/512 * width,
               expansion 4 (feature_dim 2048 * width).
  resnet_tiny: BasicBlock, stages [1, 1, 1], widths 16/32/64 * width, two
               stride-2 stages (8x8 -> 2x2), 77k params at width 1. Sized for
               8x8 digits on CPU: ~4k img/s fwd+bwd at width 1 on 2 cores
               (widths 32/64/128, i.e. width=2, run at ~1k img/s).

Stems: 'imagenet' (7x7/2 conv + 3x3/2 max-pool), 'cifar' and 'tiny' (3x3/1 conv,
no pool; 'tiny' is the name configs use alongside resnet_tiny).
"""

from collections.abc import Sequence
import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

# He (Kaiming) normal init with fan_out, as torchvision's ResNet.
conv_init = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def batch_norm(num_features: int, *, rngs: nnx.Rngs, **kwargs) -> nnx.BatchNorm:
  """BatchNorm (momentum 0.9, eps 1e-5 as torchvision) computed in float32."""
  return nnx.BatchNorm(
    num_features, momentum=0.9, epsilon=1e-5, dtype=jnp.float32, rngs=rngs, **kwargs
  )


class ConvBN(nnx.Module):
  """Bias-free conv (symmetric padding k // 2) followed by BatchNorm."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int,
    strides: int = 1,
    *,
    rngs: nnx.Rngs,
    zero_scale: bool = False,
    dtype: DTypeLike = jnp.float32,
  ):
    pad = kernel_size // 2
    self.conv = nnx.Conv(
      in_features,
      out_features,
      (kernel_size, kernel_size),
      strides,
      padding=((pad, pad), (pad, pad)),
      use_bias=False,
      kernel_init=conv_init,
      dtype=dtype,
      rngs=rngs,
    )
    scale_init = nnx.initializers.zeros if zero_scale else nnx.initializers.ones
    self.bn = batch_norm(out_features, scale_init=scale_init, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, in] -> [B, H / strides, W / strides, out] in ``dtype``."""
    y = self.bn(self.conv(x), use_running_average=not train)
    return y.astype(self.dtype)


class BasicBlock(nnx.Module):
  """Two 3x3 convs, strided first; outputs ``features`` channels."""

  expansion = 1

  def __init__(
    self,
    in_features: int,
    features: int,
    strides: int,
    *,
    rngs: nnx.Rngs,
    zero_init_residual: bool,
    dtype: DTypeLike = jnp.float32,
  ):
    self.conv1 = ConvBN(in_features, features, 3, strides, rngs=rngs, dtype=dtype)
    self.conv2 = ConvBN(
      features, features, 3, rngs=rngs, zero_scale=zero_init_residual, dtype=dtype
    )
    self.shortcut = _shortcut(in_features, features, strides, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = jax.nn.relu(self.conv1(x, train=train))
    y = self.conv2(y, train=train)
    return jax.nn.relu(y + _apply_shortcut(self.shortcut, x, train))


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 convs; outputs 4 * ``features``."""

  expansion = 4

  def __init__(
    self,
    in_features: int,
    features: int,
    strides: int,
    *,
    rngs: nnx.Rngs,
    zero_init_residual: bool,
    dtype: DTypeLike = jnp.float32,
  ):
    out_features = features * self.expansion
    self.conv1 = ConvBN(in_features, features, 1, rngs=rngs, dtype=dtype)
    self.conv2 = ConvBN(features, features, 3, strides, rngs=rngs, dtype=dtype)
    self.conv3 = ConvBN(
      features, out_features, 1, rngs=rngs, zero_scale=zero_init_residual, dtype=dtype
    )
    self.shortcut = _shortcut(in_features, out_features, strides, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = jax.nn.relu(self.conv1(x, train=train))
    y = jax.nn.relu(self.conv2(y, train=train))
    y = self.conv3(y, train=train)
    return jax.nn.relu(y + _apply_shortcut(self.shortcut, x, train))


def _shortcut(
  in_features: int, out_features: int, strides: int, *, rngs: nnx.Rngs, dtype: DTypeLike
) -> ConvBN | None:
  """1x1 projection when the block changes shape, else None (identity)."""
  if strides == 1 and in_features == out_features:
    return None
  return ConvBN(in_features, out_features, 1, strides, rngs=rngs, dtype=dtype)


def _apply_shortcut(shortcut: ConvBN | None, x: jax.Array, train: bool) -> jax.Array:
  return x if shortcut is None else shortcut(x, train=train)


@dataclasses.dataclass(frozen=True)
class _Stem:
  """Stem conv kernel size and stride, and whether a 3x3/2 max-pool follows."""

  kernel_size: int
  strides: int
  max_pool: bool


STEMS = {
  'imagenet': _Stem(kernel_size=7, strides=2, max_pool=True),
  'cifar': _Stem(kernel_size=3, strides=1, max_pool=False),
  'tiny': _Stem(kernel_size=3, strides=1, max_pool=False),
}


class ResNet(nnx.Module):
  """ResNet trunk with global average pooling (no classifier).

  The stem has ``round(base_width * width)`` channels and stage i has
  ``round(base_width * 2**i * width)`` block features; the first stage keeps
  the stem resolution and every later stage halves it.
  """

  def __init__(
    self,
    *,
    stage_sizes: Sequence[int],
    bottleneck: bool,
    width: float,
    stem: str,
    num_channels: int,
    rngs: nnx.Rngs,
    dtype: DTypeLike = jnp.float32,
    base_width: int = 64,
    zero_init_residual: bool = True,
    remat: bool = False,
  ):
    if stem not in STEMS:
      raise ValueError(f'Unknown stem {stem!r}; use one of {sorted(STEMS)}.')
    if width <= 0:
      raise ValueError(f'width must be > 0, got {width}.')
    block_cls = Bottleneck if bottleneck else BasicBlock
    stem_features = round(base_width * width)
    self.stem_spec = STEMS[stem]
    self.stem = ConvBN(
      num_channels,
      stem_features,
      self.stem_spec.kernel_size,
      self.stem_spec.strides,
      rngs=rngs,
      dtype=dtype,
    )
    blocks = []
    in_features = stem_features
    for i, num_blocks in enumerate(stage_sizes):
      features = round(base_width * 2**i * width)
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        blocks.append(
          block_cls(
            in_features,
            features,
            strides,
            rngs=rngs,
            zero_init_residual=zero_init_residual,
            dtype=dtype,
          )
        )
        in_features = features * block_cls.expansion
    self.blocks = nnx.List(blocks)
    self.num_channels = num_channels
    self.feature_dim = in_features
    self.remat = remat

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, num_channels] float -> [B, feature_dim] float32 features."""
    if x.ndim != 4 or x.shape[-1] != self.num_channels:
      raise ValueError(
        f'Expected images [B, H, W, {self.num_channels}], got '
        f'shape {x.shape}; set num_channels to match the data.'
      )
    x = jax.nn.relu(self.stem(x, train=train))
    if self.stem_spec.max_pool:
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    apply = lambda block, x: block(x, train=train)
    if self.remat:
      apply = nnx.remat(apply)
    for block in self.blocks:
      x = apply(block, x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


BACKBONES = {
  'resnet18': dict(stage_sizes=(2, 2, 2, 2), bottleneck=False),
  'resnet50': dict(stage_sizes=(3, 4, 6, 3), bottleneck=True),
  'resnet_tiny': dict(stage_sizes=(1, 1, 1), bottleneck=False, base_width=16),
}


def create_backbone(
  name: str,
  *,
  width: float,
  stem: str,
  num_channels: int,
  rngs: nnx.Rngs,
  dtype: DTypeLike = jnp.float32,
  zero_init_residual: bool = True,
  remat: bool = False,
) -> ResNet:
  """Builds one of ``BACKBONES`` (see module docstring)."""
  if name not in BACKBONES:
    raise ValueError(f'Unknown backbone {name!r}; use one of {sorted(BACKBONES)}.')
  return ResNet(
    **BACKBONES[name],
    width=width,
    stem=stem,
    num_channels=num_channels,
    rngs=rngs,
    dtype=dtype,
    zero_init_residual=zero_init_residual,
    remat=remat,
  )
