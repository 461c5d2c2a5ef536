"""Multi-crop image augmentation as pure JAX functions, run on device inside the train step.

The host only gathers uint8 images; every random choice comes from a JAX key, so the views
of a step are a function of (key, images) alone and resume exactly. Every (view, example) pair
gets its own key (`jax.random.split(key, (V, B))`) and is augmented under `jax.vmap`, so the
result does not depend on how the batch is sharded over devices.

One view of one example goes through (SimCLR / BYOL / DINO order):
  random-resized crop -> horizontal flip -> colour jitter (p=0.8) -> grayscale -> Gaussian
  blur -> solarize -> normalise with mean/std.
Colour jitter and grayscale need RGB and are skipped for other channel counts (digits);
blur and solarize work on any image and are governed by their probabilities alone.

The crop sampler, the resizing and three of the jitter ops follow a code family (`FAMILIES`):
'torchvision_bilinear' (SwAV, Suave), 'torchvision_bicubic' (DINO, Daino), 'byol' (BYOL,
SemPPL), 'simclr' (SimCLRv2), or 'ours', this code's own mix and the default.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from semi_ssl.errors import require

# ITU-R 601 luma weights, as tf.image.rgb_to_grayscale (SimCLR).
_LUMA = (0.2989, 0.5870, 0.1140)
_JITTER_PROB = 0.8
# In pixels of the view, whatever its size, as SwAV, DINO and BYOL blur their 224- and 96-pixel
# crops; the kernel reaches 3 sigma of the largest sigma.
_BLUR_SIGMA = (0.1, 2.0)
_BLUR_RADIUS = 6
_SOLARIZE_THRESHOLD = 0.5
_NUM_DRAWS = 18  # Uniforms per view of one example; see `_augment_one`.


@dataclasses.dataclass(frozen=True)
class CropSpec:
  """One family of random-resized crops: `num` views of `size` x `size` pixels."""

  num: int
  size: int
  scale: tuple[float, float]  # Range of the crop's area as a fraction of the image.
  ratio: tuple[float, float] = (3 / 4, 4 / 3)  # Range of width / height, sampled log-uniformly.


@dataclasses.dataclass(frozen=True)
class Family:
  """How one code base implements the ops that differ between recipes."""

  # x + delta, delta ~ U[-b, b] (BYOL); else x * f, f ~ U[max(0, 1 - b), 1 + b] (torchvision).
  additive_brightness: bool
  # About the mean of the grayscale image (torchvision); else about each channel's mean (BYOL).
  gray_contrast: bool
  # HSV saturation times f, clipped to [0, 1] (BYOL); else a blend with the grayscale image.
  hsv_saturation: bool
  # 0: one draw whose sides are clipped to the image; n: torchvision's up to n draws with
  # whole-pixel sides, the first that fits, else a central crop.
  crop_tries: int
  resize: str  # jax.image method: 'linear', or 'cubic' (Keys, a = -0.5, as PIL and tf.image).
  antialias: bool  # Widen the kernel when downsampling (PIL); tf.image.resize does not.


# torchvision: transforms.ColorJitter (factors from `_check_input`, a random order) and
# _functional_tensor.py adjust_brightness / adjust_contrast / adjust_saturation / adjust_hue;
# RandomResizedCrop.get_params (10 tries, then the central fallback), resizing a PIL image.
# SwAV and Suave leave RandomResizedCrop's bilinear default (swav src/multicropdataset.py
# lines 42-45; suave-daino src/multicropdataset.py lines 41-44); DINO and Daino ask for
# Image.BICUBIC (dino main_dino.py lines 436, 443, 452; suave-daino daino/main_daino.py lines
# 676, 683, 692). BYOL (deepmind-research byol/utils/augmentations.py lines 239-282, copied in
# google-deepmind/semppl utils/augmentations.py lines 244-289): additive brightness, contrast
# per channel, saturation in HSV (its contrast and saturation factors are drawn from
# [1 - r, 1 + r], the same as here for r <= 1); its crops (byol/utils/dataset.py lines 206-233)
# clip the sides to the image and are resized bicubic by tf.image.resize without antialiasing
# (line 201). SimCLRv2 (google-research/simclr tf2/data_util.py): BYOL's ops but for
# multiplicative brightness (lines 33-43, impl 'simclrv2'); the same contrast per channel
# (tf.image.random_contrast, line 152), HSV saturation (tf.image.random_saturation, line 157),
# hue (tf.image.random_hue, line 163), a random order clipping after each op (lines 169-172),
# bicubic tf.image.resize without antialiasing (line 319). One difference: its crop
# (lines 298-318) is tf.image.sample_distorted_bounding_box: up to 100 draws (aspect ratio
# uniform, not log-uniform; min_object_covered 0.1) until one fits, else the whole image; here
# one draw with its sides clipped, as BYOL.
_OURS = Family(
  additive_brightness=False,
  gray_contrast=False,
  hsv_saturation=False,
  crop_tries=0,
  resize='linear',
  antialias=True,
)
_TORCHVISION = dataclasses.replace(_OURS, gray_contrast=True, crop_tries=10)
_BYOL = dataclasses.replace(
  _OURS, additive_brightness=True, hsv_saturation=True, resize='cubic', antialias=False
)
FAMILIES = {
  'ours': _OURS,
  'torchvision_bilinear': _TORCHVISION,
  'torchvision_bicubic': dataclasses.replace(_TORCHVISION, resize='cubic'),
  'byol': _BYOL,
  'simclr': dataclasses.replace(_BYOL, additive_brightness=False),
}


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Static description of the views; hashable, so it can be a static jit argument."""

  global_crops: CropSpec
  local_crops: CropSpec | None
  flip: bool  # Horizontal flip with p=0.5.
  # Ranges of (brightness, contrast, saturation, hue), as torchvision's ColorJitter; 0 = off.
  color_jitter: tuple[float, float, float, float]
  grayscale_prob: float
  blur_prob: tuple[float, ...]  # Per global view; the last value serves further views.
  local_blur_prob: float
  solarize_prob: tuple[float, ...]  # Per global view; local views are never solarized.
  mean: tuple[float, ...]  # Per channel, of images scaled to [0, 1].
  std: tuple[float, ...]
  family: str = 'ours'  # A key of FAMILIES.
  # The labelled images' views (one crop family, no local crops); None: the views above.
  labelled: AugmentConfig | None = None

  @property
  def labelled_views(self) -> AugmentConfig:
    """What `multi_crop` gives the labelled images: `labelled`, or else these views."""
    return self.labelled or self


def _floats(values: Sequence[float]) -> tuple[float, ...]:
  return tuple(float(v) for v in values)


def _are_numbers(values) -> bool:
  return (
    isinstance(values, Sequence)
    and not isinstance(values, str)
    and all(isinstance(v, numbers.Real) for v in values)
  )


def _config_floats(aug, key: str, prefix: str = '') -> tuple[float, ...]:
  """`aug[key]` as floats; a ValueError naming `config.augment.<prefix><key>` unless it holds
  numbers."""
  values = aug[key]
  require(
    _are_numbers(values),
    f'config.augment.{prefix}{key}={values!r} must be a tuple of floats, e.g. '
    f'--config.augment.{prefix}{key}="(0.5, 1.0)".',
  )
  return _floats(values)


def _config_family(aug, prefix: str = '') -> str:
  family = aug.family
  require(
    family in FAMILIES,
    f'config.augment.{prefix}family={family!r} is unknown; set one of {", ".join(FAMILIES)}.',
  )
  return family


def _config_jitter(aug, prefix: str = '') -> tuple[float, float, float, float]:
  """`aug.color_jitter` as 4 floats; a ValueError naming `config.augment.<prefix>color_jitter`
  unless they are (brightness, contrast, saturation, hue) ranges."""
  jitter = aug.color_jitter
  require(
    _are_numbers(jitter) and len(jitter) == 4 and min(jitter) >= 0.0 and jitter[3] <= 0.5,
    f'config.augment.{prefix}color_jitter={jitter!r} must be the (brightness, contrast, '
    'saturation, hue) ranges, each >= 0 and hue <= 0.5, e.g. (0.4, 0.4, 0.2, 0.1); '
    '(0, 0, 0, 0) is off.',
  )
  return _floats(jitter)


def _check_crops(
  size_key: str, size: int, scale_key: str, scale: tuple[float, ...], image_side: int | None
) -> None:
  require(size >= 1, f'config.augment.{size_key}={size} must be a positive number of pixels.')
  require(
    image_side is None or size <= image_side,
    f'config.augment.{size_key}={size} is larger than the stored images '
    f'({image_side} pixels); set it <= {image_side}.',
  )
  require(
    len(scale) == 2 and 0.0 < scale[0] <= scale[1] <= 1.0,
    f'config.augment.{scale_key}={scale} must be an ordered (low, high) area fraction '
    'with 0 < low <= high <= 1, e.g. (0.08, 1.0).',
  )


def _check_probability(key: str, value) -> None:
  probs = np.atleast_1d(value)
  require(
    bool(np.all((probs >= 0.0) & (probs <= 1.0))),
    f'config.augment.{key}={value} is not a probability; set it in [0, 1].',
  )


# The keys of `config.augment.labelled`, all required when it is set.
LABELLED_KEYS = (
  'num_crops',
  'size',
  'scale',
  'flip',
  'color_jitter',
  'grayscale_prob',
  'blur_prob',
  'solarize_prob',
  'family',
)


def _labelled_config(
  labelled, mean: tuple[float, ...], std: tuple[float, ...], side: int | None
) -> AugmentConfig:
  """The labelled images' views from `config.augment.labelled`: `num_crops` crops of `size`
  pixels covering `scale` of the image's area, each flipped, jittered, grayed, blurred and
  solarized with the given ranges and probabilities (one for every view), by the ops of
  `family`."""
  require(
    hasattr(labelled, 'keys'),
    f'config.augment.labelled={labelled!r} must be a ConfigDict of '
    f'{", ".join(LABELLED_KEYS)}, or None (the unlabelled views).',
  )
  for key in labelled.keys():
    require(
      key in LABELLED_KEYS,
      f'config.augment.labelled.{key} is unknown; its keys are {", ".join(LABELLED_KEYS)}.',
    )
  missing = [key for key in LABELLED_KEYS if key not in labelled]
  require(
    not missing,
    f'config.augment.labelled lacks {", ".join(missing)}: give all of '
    f'{", ".join(LABELLED_KEYS)}, or set it to None (the unlabelled views).',
  )
  require(
    labelled.num_crops >= 1, f'config.augment.labelled.num_crops={labelled.num_crops} must be >= 1.'
  )
  scale = _config_floats(labelled, 'scale', prefix='labelled.')
  _check_crops('labelled.size', labelled.size, 'labelled.scale', scale, side)
  color_jitter = _config_jitter(labelled, prefix='labelled.')
  for key in ('grayscale_prob', 'blur_prob', 'solarize_prob'):
    require(
      isinstance(labelled[key], numbers.Real),
      f'config.augment.labelled.{key}={labelled[key]!r} must be one probability, for '
      'every labelled view.',
    )
    _check_probability(f'labelled.{key}', labelled[key])
  return AugmentConfig(
    global_crops=CropSpec(labelled.num_crops, labelled.size, scale),
    local_crops=None,
    flip=bool(labelled.flip),
    color_jitter=color_jitter,
    grayscale_prob=float(labelled.grayscale_prob),
    blur_prob=(float(labelled.blur_prob),),
    local_blur_prob=0.0,
    solarize_prob=(float(labelled.solarize_prob),),
    mean=mean,
    std=std,
    family=_config_family(labelled, prefix='labelled.'),
  )


def augment_config_from(
  config, mean: Sequence[float], std: Sequence[float], image_shape: Sequence[int] | None = None
) -> AugmentConfig:
  """Builds and validates an AugmentConfig from `config.augment`.

  Args:
    config: the run's ConfigDict; reads family, num_global_crops, global_size, global_scale,
      num_local_crops, local_size, local_scale, flip, color_jitter, grayscale_prob, blur_prob,
      local_blur_prob and solarize_prob under `config.augment`, and `labelled` (absent or None:
      labelled images get these views too; else a ConfigDict of `LABELLED_KEYS`).
    mean, std: per-channel statistics of images scaled to [0, 1].
    image_shape: (H, W, C) of the stored images; when given, crop sizes must fit in them and
      mean/std must have C entries.

  Raises:
    ValueError: naming the offending key and the fix.
  """
  aug = config.augment
  side = min(image_shape[:2]) if image_shape is not None else None
  require(
    aug.num_global_crops >= 1,
    f'config.augment.num_global_crops={aug.num_global_crops} must be >= 1.',
  )
  require(
    aug.num_local_crops >= 0,
    f'config.augment.num_local_crops={aug.num_local_crops} must be >= 0 (0 = none).',
  )
  global_scale = _config_floats(aug, 'global_scale')
  _check_crops('global_size', aug.global_size, 'global_scale', global_scale, side)
  local_crops = None
  if aug.num_local_crops:
    local_scale = _config_floats(aug, 'local_scale')
    _check_crops('local_size', aug.local_size, 'local_scale', local_scale, side)
    local_crops = CropSpec(aug.num_local_crops, aug.local_size, local_scale)
  color_jitter = _config_jitter(aug)
  per_view = {key: _config_floats(aug, key) for key in ('blur_prob', 'solarize_prob')}
  for key, probs in per_view.items():
    require(
      len(probs) > 0,
      f'config.augment.{key} is empty; give one probability per '
      'global view, e.g. (1.0, 0.1); the last one serves further views.',
    )
  for key in ('grayscale_prob', 'blur_prob', 'local_blur_prob', 'solarize_prob'):
    _check_probability(key, aug[key])
  mean, std = _floats(mean), _floats(std)
  require(
    len(mean) == len(std) and all(s > 0 for s in std),
    f'mean={mean} and std={std} must have one entry per channel and std > 0.',
  )
  if image_shape is not None:
    require(
      len(mean) == image_shape[-1],
      f'mean/std have {len(mean)} entries but the images have {image_shape[-1]} channels; '
      'give one per channel.',
    )
  return AugmentConfig(
    global_crops=CropSpec(aug.num_global_crops, aug.global_size, global_scale),
    local_crops=local_crops,
    flip=bool(aug.flip),
    color_jitter=color_jitter,
    grayscale_prob=float(aug.grayscale_prob),
    blur_prob=per_view['blur_prob'],
    local_blur_prob=float(aug.local_blur_prob),
    solarize_prob=per_view['solarize_prob'],
    mean=mean,
    std=std,
    family=_config_family(aug),
    labelled=(
      None if aug.get('labelled') is None else _labelled_config(aug.labelled, mean, std, side)
    ),
  )


# --- Geometry (one example) ------------------------------------------------------------------


def _crop_and_resize(
  image: jax.Array,
  box: tuple[jax.Array | float, ...],
  size: int,
  method: str = 'linear',
  antialias: bool = True,
) -> jax.Array:
  """Resamples box=(top, left, height, width) of [H, W, C] in [0, 1] to [size, size, C].

  By `method` ('linear' or 'cubic') of jax.image, its kernel widened when downsampling if
  `antialias`; cubic overshoots are clipped to [0, 1]. The box is continuous (in pixel
  edges), so crops need not align with the pixel grid.
  """
  top, left, height, width = box
  scale = jnp.stack([size / height, size / width])
  translation = -jnp.stack([top, left]) * scale
  resized = jax.image.scale_and_translate(
    image,
    (size, size, image.shape[-1]),
    (0, 1),
    scale,
    translation,
    method=method,
    antialias=antialias,
  )
  return resized if method == 'linear' else jnp.clip(resized, 0.0, 1.0)


def _lerp(u: jax.Array, low: float, high: float) -> jax.Array:
  """Maps uniforms in [0, 1) to [low, high)."""
  return low + (high - low) * u


def _crop_box(u: jax.Array, height: int, width: int, spec: CropSpec) -> tuple[jax.Array, ...]:
  """Inception-style (top, left, height, width) from 4 uniforms: area fraction ~ U(scale),
  log(width / height) ~ U(log ratio), sides clipped to the image, position uniform."""
  area = height * width * _lerp(u[0], *spec.scale)
  aspect = jnp.exp(_lerp(u[1], math.log(spec.ratio[0]), math.log(spec.ratio[1])))
  box_h = jnp.minimum(jnp.sqrt(area / aspect), height)
  box_w = jnp.minimum(jnp.sqrt(area * aspect), width)
  return u[2] * (height - box_h), u[3] * (width - box_w), box_h, box_w


def _central_crop_sides(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
  """torchvision's fallback: the whole image, cut to the nearest aspect ratio in `ratio`."""
  if width / height < min(ratio):
    return round(width / min(ratio)), width
  if width / height > max(ratio):
    return height, round(height * max(ratio))
  return height, width


def _torchvision_crop_box(
  draws: jax.Array, position: jax.Array, height: int, width: int, spec: CropSpec
) -> tuple[jax.Array, ...]:
  """torchvision's RandomResizedCrop.get_params as (top, left, height, width) from uniforms.

  Each row of draws [tries, 2] gives an area fraction ~ U(scale) and log(width / height) ~
  U(log ratio), the sides rounded to whole pixels; the first box that fits the image is placed
  at whole-pixel offsets from position [2]; when none fits, the central crop of
  `_central_crop_sides`.
  """
  area = height * width * _lerp(draws[:, 0], *spec.scale)
  aspect = jnp.exp(_lerp(draws[:, 1], math.log(spec.ratio[0]), math.log(spec.ratio[1])))
  box_h, box_w = jnp.round(jnp.sqrt(area / aspect)), jnp.round(jnp.sqrt(area * aspect))
  fits = (box_h > 0) & (box_h <= height) & (box_w > 0) & (box_w <= width)
  first = jnp.argmax(fits)  # The first that fits; index 0 when none does.
  central_h, central_w = _central_crop_sides(height, width, spec.ratio)
  found = fits[first]
  box_h = jnp.where(found, box_h[first], central_h)
  box_w = jnp.where(found, box_w[first], central_w)
  # torch.randint(0, n + 1): an offset in {0, ..., n}; the minimum guards rounding at u ~ 1.
  top = jnp.minimum(jnp.floor(position[0] * (height - box_h + 1)), height - box_h)
  left = jnp.minimum(jnp.floor(position[1] * (width - box_w + 1)), width - box_w)
  top = jnp.where(found, top, (height - central_h) // 2)
  left = jnp.where(found, left, (width - central_w) // 2)
  return top, left, box_h, box_w


# --- Colour (one example, values in [0, 1]) -------------------------------------------------


def _grayscale(x: jax.Array) -> jax.Array:
  """[H, W, 3] -> luma broadcast to [H, W, 3]."""
  luma = x @ jnp.asarray(_LUMA, x.dtype)
  return jnp.broadcast_to(luma[..., None], x.shape)


def _rgb_to_hsv(x: jax.Array) -> jax.Array:
  """[..., 3] RGB -> [..., 3] HSV, all channels in [0, 1] (as colorsys)."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  value = jnp.max(x, axis=-1)
  delta = value - jnp.min(x, axis=-1)
  safe_delta = jnp.where(delta > 0, delta, 1.0)
  saturation = jnp.where(value > 0, delta / jnp.where(value > 0, value, 1.0), 0.0)
  hue = jnp.where(
    value == r,
    (g - b) / safe_delta,
    jnp.where(value == g, 2.0 + (b - r) / safe_delta, 4.0 + (r - g) / safe_delta),
  )
  hue = jnp.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
  return jnp.stack([hue, saturation, value], axis=-1)


def _hsv_to_rgb(x: jax.Array) -> jax.Array:
  """[..., 3] HSV -> [..., 3] RGB, inverse of `_rgb_to_hsv`."""
  hue, saturation, value = x[..., 0:1], x[..., 1:2], x[..., 2:3]
  k = (jnp.asarray([5.0, 3.0, 1.0], x.dtype) + 6.0 * hue) % 6.0
  return value - value * saturation * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def _scale_brightness(x: jax.Array, factor: jax.Array) -> jax.Array:
  return x * factor


def _shift_brightness(x: jax.Array, delta: jax.Array) -> jax.Array:
  return x + delta


def _channel_contrast(x: jax.Array, factor: jax.Array) -> jax.Array:
  mean = jnp.mean(x, axis=(0, 1), keepdims=True)  # Per channel, as tf.image.adjust_contrast.
  return (x - mean) * factor + mean


def _gray_contrast(x: jax.Array, factor: jax.Array) -> jax.Array:
  mean = jnp.mean(x @ jnp.asarray(_LUMA, x.dtype))  # One scalar, as torchvision.
  return (x - mean) * factor + mean


def _blend_saturation(x: jax.Array, factor: jax.Array) -> jax.Array:
  gray = _grayscale(x)
  return gray + (x - gray) * factor


def _hsv_saturation(x: jax.Array, factor: jax.Array) -> jax.Array:
  hsv = _rgb_to_hsv(x)
  return _hsv_to_rgb(hsv.at[..., 1].set(jnp.clip(hsv[..., 1] * factor, 0.0, 1.0)))


def _adjust_hue(x: jax.Array, delta: jax.Array) -> jax.Array:
  hsv = _rgb_to_hsv(x)
  return _hsv_to_rgb(hsv.at[..., 0].set((hsv[..., 0] + delta) % 1.0))


def _color_jitter(
  u: jax.Array, x: jax.Array, ranges: tuple[float, ...], family: Family
) -> jax.Array:
  """Colour jitter of [H, W, 3] in [0, 1] by `family`'s ops, from 8 uniforms.

  Brightness, contrast and saturation with factors in [max(0, 1 - r), 1 + r] (brightness by a
  shift in [-r, r] if additive) and hue (HSV shift in [-r, r]), r from ranges = (brightness,
  contrast, saturation, hue), applied in a random order (torchvision's ColorJitter, BYOL's
  `shuffle`), clipping to [0, 1] after each.
  """
  brightness, contrast, saturation, hue = ranges

  def factor(u: jax.Array, r: float) -> jax.Array:
    return _lerp(u, max(0.0, 1.0 - r), 1.0 + r)

  ops = [
    functools.partial(_shift_brightness, delta=_lerp(u[0], -brightness, brightness))
    if family.additive_brightness
    else functools.partial(_scale_brightness, factor=factor(u[0], brightness)),
    functools.partial(
      _gray_contrast if family.gray_contrast else _channel_contrast, factor=factor(u[1], contrast)
    ),
    functools.partial(
      _hsv_saturation if family.hsv_saturation else _blend_saturation,
      factor=factor(u[2], saturation),
    ),
    functools.partial(_adjust_hue, delta=_lerp(u[3], -hue, hue)),
  ]
  order = jnp.argsort(u[4:8])  # A uniformly random permutation.

  def apply_step(step: int, x: jax.Array) -> jax.Array:
    return jnp.clip(jax.lax.switch(order[step], ops, x), 0.0, 1.0)

  return jax.lax.fori_loop(0, len(ops), apply_step, x)  # A loop: compiles the ops once.


def _gaussian_blur(x: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
  """Separable Gaussian blur of [H, W, C] with a (2 radius + 1)-tap kernel, reflected edges."""
  taps = jnp.arange(-radius, radius + 1, dtype=x.dtype)
  kernel = jnp.exp(-0.5 * (taps / sigma) ** 2)
  kernel = kernel / jnp.sum(kernel)
  for axis in (0, 1):
    padding = [(0, 0)] * x.ndim
    padding[axis] = (radius, radius)
    padded = jnp.pad(x, padding, mode='reflect')
    x = sum(
      kernel[i] * jax.lax.slice_in_dim(padded, i, i + x.shape[axis], axis=axis)
      for i in range(2 * radius + 1)
    )
  return x


def _solarize(x: jax.Array) -> jax.Array:
  return jnp.where(x < _SOLARIZE_THRESHOLD, x, 1.0 - x)


# --- Views ---------------------------------------------------------------------------------


def _normalize(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """[..., C] in [0, 1] -> (x - mean) / std."""
  require(
    len(mean) == len(std) == x.shape[-1],
    f'mean={tuple(mean)} and std={tuple(std)} need one entry per image channel ({x.shape[-1]}).',
  )
  return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def _augment_one(
  key: jax.Array,
  image: jax.Array,
  blur_prob: jax.Array,
  solarize_prob: jax.Array,
  *,
  cfg: AugmentConfig,
  crop: CropSpec,
  blur: bool,
  solarize: bool,
) -> jax.Array:
  """One view of one uint8 [H, W, C] image -> float32 [size, size, C], normalised.

  Every random choice reads one entry of a single draw of uniforms: one random-number call per
  view instead of one per choice keeps compilation fast. `blur` and `solarize` say whether any
  view of this crop family can be blurred or solarized; when not, those ops are left out.
  """
  family = FAMILIES[cfg.family]
  tries = max(family.crop_tries, 1)
  u = jax.random.uniform(key, (_NUM_DRAWS + 2 * (tries - 1),))  # Further crop tries at the end.
  crop_u, jitter_u = u[0:4], u[4:12]
  flip_u, jitter_apply_u, gray_u, blur_u, sigma_u, solarize_u = u[12:_NUM_DRAWS]
  height, width, channels = image.shape
  if family.crop_tries:
    draws = jnp.concatenate([crop_u[:2], u[_NUM_DRAWS:]]).reshape(tries, 2)
    box = _torchvision_crop_box(draws, crop_u[2:], height, width, crop)
  else:
    box = _crop_box(crop_u, height, width, crop)
  x = image.astype(jnp.float32) / 255.0
  x = _crop_and_resize(x, box, crop.size, family.resize, family.antialias)
  if cfg.flip:
    x = jnp.where(flip_u < 0.5, x[:, ::-1], x)
  if channels == 3 and max(cfg.color_jitter) > 0:
    jittered = _color_jitter(jitter_u, x, cfg.color_jitter, family)
    x = jnp.where(jitter_apply_u < _JITTER_PROB, jittered, x)
  if channels == 3 and cfg.grayscale_prob > 0:
    x = jnp.where(gray_u < cfg.grayscale_prob, _grayscale(x), x)
  if blur:
    sigma = _lerp(sigma_u, *_BLUR_SIGMA)
    radius = min(_BLUR_RADIUS, crop.size - 1)  # Reflected edges need radius < size.
    x = jnp.where(blur_u < blur_prob, _gaussian_blur(x, sigma, radius=radius), x)
  if solarize:
    x = jnp.where(solarize_u < solarize_prob, _solarize(x), x)
  return _normalize(x, cfg.mean, cfg.std)


def _augment_family(
  keys: jax.Array,
  images: jax.Array,
  cfg: AugmentConfig,
  crop: CropSpec,
  blur_probs: tuple[float, ...],
  solarize_probs: tuple[float, ...],
) -> list[jax.Array]:
  """The len(blur_probs) views of one crop family, computed together (vmap over views and
  examples): uint8 [B, H, W, C] and keys [B, V], one per example and view -> views, each
  float32 [B, size, size, C]."""
  augment = functools.partial(
    _augment_one, cfg=cfg, crop=crop, blur=max(blur_probs) > 0, solarize=max(solarize_probs) > 0
  )
  per_view = jax.vmap(jax.vmap(augment, in_axes=(0, 0, None, None)), in_axes=(1, None, 0, 0))
  return list(per_view(keys, images, jnp.asarray(blur_probs), jnp.asarray(solarize_probs)))


def _per_view(probs: tuple[float, ...], num: int) -> tuple[float, ...]:
  """The first `num` probabilities, repeating the last one as needed."""
  return (probs + probs[-1:] * num)[:num]


def view_keys(key: jax.Array, batch_size: int, cfg: AugmentConfig) -> dict[str, jax.Array]:
  """{'global': [B, V_global], 'local': [B, V_local]} keys, one per example and view, that
  `views_from_keys` augments with: rows of examples, so that a batch's rows and theirs split
  alike (gradient accumulation's micro-batches build their own views)."""
  num_local = cfg.local_crops.num if cfg.local_crops is not None else 0
  return {
    family: jnp.swapaxes(jax.random.split(family_key, (num, batch_size)), 0, 1)
    for family, family_key, num in zip(
      ('global', 'local'), jax.random.split(key), (cfg.global_crops.num, num_local)
    )
  }


def views_from_keys(keys: dict[str, jax.Array], images: jax.Array, cfg: AugmentConfig):
  """uint8 [B, H, W, C] and `view_keys` rows [B, ...] -> global views then local views, each
  float32 [B, size, size, C]."""
  require(
    images.ndim == 4 and images.dtype == jnp.uint8,
    f'Augmentation expects uint8 images [B, H, W, C], got {images.dtype} {images.shape}.',
  )
  num_global = cfg.global_crops.num
  views = _augment_family(
    keys['global'],
    images,
    cfg,
    cfg.global_crops,
    _per_view(cfg.blur_prob, num_global),
    _per_view(cfg.solarize_prob, num_global),
  )
  if cfg.local_crops is not None:
    num_local = cfg.local_crops.num
    views += _augment_family(
      keys['local'],
      images,
      cfg,
      cfg.local_crops,
      (cfg.local_blur_prob,) * num_local,
      (0.0,) * num_local,
    )
  return views


def multi_crop(key: jax.Array, images: jax.Array, cfg: AugmentConfig) -> list[jax.Array]:
  """uint8 [B, H, W, C] -> global views then local views, each float32 [B, size, size, C].

  View v of example i depends only on (key, B, v, images[i]), whatever the sharding of `images`.
  """
  return views_from_keys(view_keys(key, images.shape[0], cfg), images, cfg)


def eval_view(
  images: jax.Array,
  size: int,
  mean: Sequence[float],
  std: Sequence[float],
  crop_fraction: float = 1.0,
) -> jax.Array:
  """uint8 [B, H, W, C] -> float32 [B, size, size, C], normalised.

  Takes the centred square of side crop_fraction * min(H, W) and resizes it to `size`
  (the identity when that square is the whole image and size == H == W). crop_fraction=0.875
  gives the usual ImageNet protocol (resize to 256, centre-crop 224).
  """
  require(0.0 < crop_fraction <= 1.0, f'crop_fraction={crop_fraction} must be in (0, 1].')
  height, width = images.shape[1:3]
  side = crop_fraction * min(height, width)
  box = ((height - side) / 2, (width - side) / 2, side, side)
  x = images.astype(jnp.float32) / 255.0
  x = jax.vmap(lambda image: _crop_and_resize(image, box, size))(x)
  return _normalize(x, mean, std)
