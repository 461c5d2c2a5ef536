"""Tests for semi_ssl.data.augment against plain numpy references.

The references of the family ops are ports, to numpy, of torchvision
(torchvision/transforms/_functional_tensor.py: _blend, rgb_to_grayscale, adjust_brightness,
adjust_contrast, adjust_saturation, adjust_hue, _rgb2hsv, _hsv2rgb; transforms.py:
RandomResizedCrop.get_params, ColorJitter) and of BYOL (github.com/google-deepmind/
deepmind-research, byol/utils/augmentations.py lines 172-282 and 291-347).
"""

import colorsys
import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from scipy import ndimage

from semi_ssl.data import augment
from semi_ssl.data.augment import AugmentConfig, CropSpec

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
SIMCLR_JITTER = (0.8, 0.8, 0.8, 0.2)  # SimCLR's strength 1.
# Compiled once per (config, shapes, sharding), so tests share compilations.
_multi_crop = jax.jit(augment.multi_crop, static_argnames='cfg')


def _plain_config(size: int = 16, num: int = 1, **overrides) -> AugmentConfig:
  """Whole-image crops resized to `size`, no other augmentation."""
  cfg = AugmentConfig(
    global_crops=CropSpec(num, size, scale=(1.0, 1.0), ratio=(1.0, 1.0)),
    local_crops=None,
    flip=False,
    color_jitter=(0.0, 0.0, 0.0, 0.0),
    grayscale_prob=0.0,
    blur_prob=(0.0,),
    local_blur_prob=0.0,
    solarize_prob=(0.0,),
    mean=MEAN,
    std=STD,
  )
  return dataclasses.replace(cfg, **overrides)


def _full_config() -> AugmentConfig:
  return AugmentConfig(
    global_crops=CropSpec(2, 8, scale=(0.3, 1.0)),
    local_crops=CropSpec(3, 4, scale=(0.1, 0.3)),
    flip=True,
    color_jitter=SIMCLR_JITTER,
    grayscale_prob=0.2,
    blur_prob=(1.0, 0.1),
    local_blur_prob=0.5,
    solarize_prob=(0.0, 0.2),
    mean=MEAN,
    std=STD,
  )


def _images(batch: int = 8, side: int = 16, channels: int = 3, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (batch, side, side, channels), dtype=np.uint8)


def _unit(images: np.ndarray) -> np.ndarray:
  return images.astype(np.float32) / 255.0


def _denormalize(x, mean=MEAN, std=STD) -> np.ndarray:
  return np.asarray(x) * np.asarray(std) + np.asarray(mean)


def _triangle(d: np.ndarray) -> np.ndarray:
  return np.maximum(0.0, 1.0 - d)


def _keys_cubic(d: np.ndarray, a: float = -0.5) -> np.ndarray:
  """Keys' cubic convolution kernel of |offset| d, a = -0.5 as PIL's and tf.image's bicubic."""
  near = ((a + 2) * d - (a + 3)) * d * d + 1
  far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
  return np.where(d < 1, near, np.where(d < 2, far, 0.0))


def _np_resize(x: np.ndarray, size: int, kernel=_triangle, antialias: bool = True) -> np.ndarray:
  """Resize of [B, H, W, C] by `kernel` of the distance in input pixels, the kernel widened by
  the downsampling factor if `antialias` (PIL); weights normalised to sum to 1."""

  def weights(n_in):
    stretch = n_in / size
    centres = (np.arange(size) + 0.5) * stretch - 0.5
    width = max(stretch, 1.0) if antialias else 1.0
    w = kernel(np.abs(centres[None, :] - np.arange(n_in)[:, None]) / width)
    return w / w.sum(axis=0)

  return np.einsum('bhwc,hy,wx->byxc', x, weights(x.shape[1]), weights(x.shape[2]))


def _roughness(x: np.ndarray) -> np.ndarray:
  """Mean squared difference of vertical neighbours of each image in [B, H, W, C]."""
  return np.square(np.diff(x, axis=1)).mean(axis=(1, 2, 3))


def _np_solarize(x: np.ndarray) -> np.ndarray:
  return np.where(x < 0.5, x, 1.0 - x)


def _np_grayscale(x: np.ndarray) -> np.ndarray:
  luma = 0.2989 * x[..., 0] + 0.5870 * x[..., 1] + 0.1140 * x[..., 2]
  return np.repeat(luma[..., None], 3, axis=-1)


def test_multi_crop_shapes_dtypes_and_range():
  views = _multi_crop(jax.random.key(0), _images(), cfg=_full_config())
  assert len(views) == 5
  chex.assert_shape(views[:2], (8, 8, 8, 3))
  chex.assert_shape(views[2:], (8, 4, 4, 3))
  chex.assert_type(views, jnp.float32)
  for view in views:
    unit = _denormalize(view)
    assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5


def test_multi_crop_is_a_function_of_the_key():
  cfg, images = _full_config(), _images()
  first = _multi_crop(jax.random.key(0), images, cfg=cfg)
  again = _multi_crop(jax.random.key(0), images, cfg=cfg)
  other = _multi_crop(jax.random.key(1), images, cfg=cfg)
  for a, b, c in zip(first, again, other):
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
  assert not np.allclose(first[0], first[1])  # Views of one step differ from each other.


def test_sharded_batch_matches_unsharded():
  mesh = Mesh(np.array(jax.devices()), ('data',))
  sharding = NamedSharding(mesh, P('data'))
  cfg, images = _full_config(), _images(batch=len(jax.devices()))
  expected = _multi_crop(jax.random.key(3), images, cfg=cfg)
  got = _multi_crop(jax.random.key(3), jax.device_put(images, sharding), cfg=cfg)
  for e, g in zip(expected, got):
    np.testing.assert_allclose(g, e, atol=1e-5)
    assert g.sharding.is_equivalent_to(sharding, g.ndim)  # Views stay on their devices.


def test_whole_image_crops_are_the_resized_image():
  images = _images()
  whole = CropSpec(1, 20, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  views = _multi_crop(jax.random.key(0), images, cfg=_plain_config(12, local_crops=whole))
  for view in views:  # Downsampled to 12, upsampled to 20.
    expected = _np_resize(_unit(images), view.shape[1])
    np.testing.assert_allclose(_denormalize(view), expected, atol=1e-5)


@pytest.mark.parametrize(
  'family, kernel, antialias',
  [
    ('torchvision_bilinear', _triangle, True),  # PIL's BILINEAR.
    ('torchvision_bicubic', _keys_cubic, True),  # PIL's BICUBIC.
    ('byol', _keys_cubic, False),  # tf.image.resize(BICUBIC), antialias=False by default.
    ('simclr', _keys_cubic, False),  # The same (simclr tf2/data_util.py line 319).
  ],
)
def test_whole_image_crops_are_resized_as_the_family_does(family, kernel, antialias):
  """Downsampled from 16 to 12 pixels ('ours': the test above); bicubic overshoots clipped."""
  images = _images()
  (view,) = _multi_crop(jax.random.key(0), images, cfg=_plain_config(12, family=family))
  expected = np.clip(_np_resize(_unit(images), 12, kernel, antialias), 0.0, 1.0)
  np.testing.assert_allclose(_denormalize(view), expected, atol=1e-5)
  bilinear = _np_resize(_unit(images), 12)
  assert (kernel is _triangle and antialias) == np.allclose(expected, bilinear, atol=1e-3)


def test_random_crop_boxes_lie_inside_the_image():
  spec = CropSpec(1, 8, scale=(0.2, 0.6), ratio=(0.5, 2.0))
  uniforms = jax.random.uniform(jax.random.key(0), (2000, 4))
  boxes = jax.jit(jax.vmap(lambda u: augment._crop_box(u, 16, 12, spec)))(uniforms)
  top, left, h, w = map(np.asarray, boxes)
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= 16 + 1e-4).all() and (left + w <= 12 + 1e-4).all()
  area = h * w / (16 * 12)
  assert area.max() <= 0.6 + 1e-5 and area.min() > 0.1
  assert np.std(w / h) > 0.1  # The aspect ratio really varies.


def test_flip_mirrors_about_half_the_examples():
  images = _images(batch=32)  # All or none flipped: p = 2^-31 for a random key.
  (view,) = _multi_crop(jax.random.key(0), images, cfg=_plain_config(flip=True))
  got, plain = _denormalize(view), _unit(images)
  mirrored = np.array([np.allclose(g, p[:, ::-1], atol=1e-5) for g, p in zip(got, plain)])
  unchanged = np.array([np.allclose(g, p, atol=1e-5) for g, p in zip(got, plain)])
  assert (mirrored ^ unchanged).all()
  assert 4 <= mirrored.sum() <= 28


def test_grayscale_and_per_view_solarize_match_numpy():
  images = _images()
  cfg = _plain_config(num=3, grayscale_prob=1.0, solarize_prob=(0.0, 1.0))
  views = _multi_crop(jax.random.key(0), images, cfg=cfg)
  gray = _np_grayscale(_unit(images))
  np.testing.assert_allclose(_denormalize(views[0]), gray, atol=1e-5)
  for view in views[1:]:  # The last probability serves the third view too.
    np.testing.assert_allclose(_denormalize(view), _np_solarize(gray), atol=1e-5)


@pytest.mark.parametrize('side', [32, 112])
def test_blur_smooths_only_the_views_given_it(side):
  """Sigma is 0.1-2 pixels at any view size (as in SwAV and DINO), so small views blur too."""
  images = _images(side=side)
  cfg = _plain_config(side, num=2, blur_prob=(1.0, 0.0))
  blurred, plain = map(_denormalize, _multi_crop(jax.random.key(0), images, cfg=cfg))
  np.testing.assert_allclose(plain, _unit(images), atol=1e-5)
  assert (_roughness(blurred) <= _roughness(plain) + 1e-6).all()
  assert _roughness(blurred).mean() < 0.5 * _roughness(plain).mean()


def test_colour_ops_skip_single_channel_images():
  images = _images(channels=1)
  cfg = _plain_config(color_jitter=SIMCLR_JITTER, grayscale_prob=1.0, mean=(0.5,), std=(0.2,))
  (view,) = _multi_crop(jax.random.key(0), images, cfg=cfg)
  np.testing.assert_allclose(_denormalize(view, (0.5,), (0.2,)), _unit(images), atol=1e-5)


def test_color_jitter_changes_most_images_and_stays_in_range():
  images = _images(batch=16)
  (view,) = _multi_crop(jax.random.key(0), images, cfg=_plain_config(color_jitter=SIMCLR_JITTER))
  got = _denormalize(view)
  changed = [not np.allclose(g, p, atol=1e-3) for g, p in zip(got, _unit(images))]
  assert 8 <= sum(changed) < 16  # Applied with p=0.8.
  assert got.min() >= -1e-5 and got.max() <= 1 + 1e-5


def test_hsv_conversion_matches_colorsys():
  rgb = np.random.default_rng(0).uniform(size=(64, 3)).astype(np.float32)
  rgb[:4] = [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0]]  # Grey and pure colours.
  hsv = np.asarray(jax.jit(augment._rgb_to_hsv)(rgb))
  np.testing.assert_allclose(hsv, [colorsys.rgb_to_hsv(*p) for p in rgb], atol=1e-5)
  np.testing.assert_allclose(jax.jit(augment._hsv_to_rgb)(hsv), rgb, atol=1e-5)


def test_hue_shift_matches_colorsys():
  rgb = np.random.default_rng(1).uniform(size=(4, 4, 3)).astype(np.float32)
  expected = [
    colorsys.hsv_to_rgb((h + 0.3) % 1, s, v)
    for h, s, v in (colorsys.rgb_to_hsv(*p) for p in rgb.reshape(-1, 3))
  ]
  got = jax.jit(augment._adjust_hue)(rgb, 0.3)
  np.testing.assert_allclose(got, np.reshape(expected, rgb.shape), atol=1e-5)


def test_gaussian_blur_matches_scipy():
  x = np.random.default_rng(0).uniform(size=(12, 10, 3)).astype(np.float32)
  sigma, radius = 1.3, 3
  expected = ndimage.gaussian_filter(
    x, sigma=(sigma, sigma, 0), mode='mirror', truncate=radius / sigma
  )  # Same 2 * radius + 1 taps.
  got = jax.jit(augment._gaussian_blur, static_argnames='radius')(x, sigma, radius=radius)
  np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
  'size, crop_fraction, reference',
  [
    (16, 1.0, lambda x: x),
    (8, 1.0, lambda x: _np_resize(x, 8)),
    (8, 0.5, lambda x: x[:, 4:12, 4:12]),
  ],
  ids=['identity', 'resize', 'centre_crop'],
)
def test_eval_view(size, crop_fraction, reference):
  images = _images()
  eval_view = jax.jit(augment.eval_view, static_argnums=(1, 2, 3, 4))
  view = eval_view(images, size, MEAN, STD, crop_fraction)
  chex.assert_shape(view, (8, size, size, 3))
  np.testing.assert_allclose(_denormalize(view), reference(_unit(images)), atol=1e-5)


def test_multi_crop_rejects_float_images():
  with pytest.raises(ValueError, match='uint8'):
    augment.multi_crop(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), _plain_config(8))


def _config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.augment = ml_collections.ConfigDict(
    dict(
      num_global_crops=2,
      global_size=8,
      global_scale=(0.5, 1.0),
      num_local_crops=0,
      local_size=6,
      local_scale=(0.2, 0.5),
      family='ours',
      flip=True,
      color_jitter=(0.4, 0.4, 0.4, 0.1),
      grayscale_prob=0.2,
      blur_prob=(1.0, 0.1),
      local_blur_prob=0.5,
      solarize_prob=(0.0, 0.2),
    )
  )
  config.augment.update(overrides)
  return config


def test_augment_config_from():
  cfg = augment.augment_config_from(_config(), MEAN, STD, image_shape=(16, 16, 3))
  assert cfg.global_crops == CropSpec(2, 8, (0.5, 1.0))
  assert cfg.local_crops is None
  assert (cfg.family, cfg.flip, cfg.grayscale_prob) == ('ours', True, 0.2)
  assert cfg.color_jitter == (0.4, 0.4, 0.4, 0.1)
  assert (cfg.blur_prob, cfg.local_blur_prob, cfg.solarize_prob) == ((1.0, 0.1), 0.5, (0.0, 0.2))
  assert (cfg.mean, cfg.std) == (MEAN, STD)
  with_local = augment.augment_config_from(_config(num_local_crops=4, blur_prob=(1.0,)), MEAN, STD)
  assert with_local.local_crops == CropSpec(4, 6, (0.2, 0.5))
  assert with_local.blur_prob == (1.0,)


@pytest.mark.parametrize(
  'overrides, match',
  [
    (dict(num_global_crops=0), 'num_global_crops'),
    (dict(num_local_crops=-1), 'num_local_crops'),
    (dict(global_size=32), 'global_size=32 is larger'),
    (dict(num_local_crops=2, local_size=17), 'local_size=17 is larger'),
    (dict(global_scale=(0.0, 1.0)), 'global_scale'),
    (dict(global_scale=(0.8, 0.5)), 'global_scale'),
    (dict(num_local_crops=2, local_scale=(0.2, 1.5)), 'local_scale'),
    (dict(color_jitter=(0.4, -0.4, 0.2, 0.1)), 'color_jitter'),
    (dict(color_jitter=(0.4, 0.4, 0.2, 0.6)), 'color_jitter'),  # torchvision: hue <= 0.5.
    (dict(color_jitter=(0.4, 0.4, 0.2)), r'color_jitter=\(0.4, 0.4, 0.2\) must be the'),
    (dict(family='simclrv1'), "family='simclrv1' is unknown; set one of ours, torchvision"),
    (dict(blur_prob=(1.0, 1.2)), 'blur_prob'),
    (dict(solarize_prob=()), 'solarize_prob'),
    (dict(grayscale_prob=-0.1), 'grayscale_prob'),
  ],
)
def test_augment_config_from_rejects(overrides, match):
  with pytest.raises(ValueError, match=match):
    augment.augment_config_from(_config(**overrides), MEAN, STD, image_shape=(16, 16, 3))


def test_augment_config_from_rejects_mean_of_wrong_length():
  with pytest.raises(ValueError, match='channels'):
    augment.augment_config_from(_config(), (0.5,), (0.2,), image_shape=(16, 16, 3))


# --- Family ops against ports of torchvision and BYOL -----------------------------------------


def _tv_blend(img1, img2, ratio):
  """torchvision _blend for float images: bound 1."""
  return np.clip(ratio * img1 + (1.0 - ratio) * img2, 0.0, 1.0)


def _tv_grayscale(x):
  """torchvision rgb_to_grayscale, one channel kept: [H, W, 1]."""
  return (0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]


def _tv_brightness(x, factor):
  return _tv_blend(x, np.zeros_like(x), factor)


def _tv_contrast(x, factor):
  return _tv_blend(x, np.mean(_tv_grayscale(x)), factor)


def _tv_saturation(x, factor):
  return _tv_blend(x, _tv_grayscale(x), factor)


def _tv_rgb2hsv(x):
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  maxc, minc = x.max(axis=-1), x.min(axis=-1)
  eqc = maxc == minc
  cr = maxc - minc
  s = cr / np.where(eqc, 1.0, maxc)
  cr_divisor = np.where(eqc, 1.0, cr)
  rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
  hr = (maxc == r) * (bc - gc)
  hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
  hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
  return np.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0), s, maxc


def _tv_hsv2rgb(h, s, v):
  i = np.floor(h * 6.0)
  f = h * 6.0 - i
  i = i.astype(np.int32) % 6
  p = np.clip(v * (1.0 - s), 0.0, 1.0)
  q = np.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = np.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  r = np.choose(i, [v, q, p, p, t, v])
  g = np.choose(i, [t, v, v, q, p, p])
  b = np.choose(i, [p, p, t, v, v, q])
  return np.stack([r, g, b], axis=-1)


def _tv_hue(x, delta):
  h, s, v = _tv_rgb2hsv(x)
  return _tv_hsv2rgb((h + delta) % 1.0, s, v)


def _byol_brightness(x, delta):
  return np.clip(x + delta, 0.0, 1.0)  # Its color jitter clips after every op.


def _byol_contrast(x, factor):
  mean = np.mean(x, axis=(0, 1), keepdims=True)  # Of each channel.
  return np.clip(factor * (x - mean) + mean, 0.0, 1.0)


def _byol_rgb_to_hsv(r, g, b):
  vv = np.maximum(np.maximum(r, g), b)
  range_ = vv - np.minimum(np.minimum(r, g), b)
  sat = np.where(vv > 0, range_ / np.where(vv > 0, vv, 1.0), 0.0)
  norm = np.where(range_ != 0, 1.0 / (6.0 * np.where(range_ != 0, range_, 1.0)), 1e9)
  hr = norm * (g - b)
  hg = norm * (b - r) + 2.0 / 6.0
  hb = norm * (r - g) + 4.0 / 6.0
  hue = np.where(r == vv, hr, np.where(g == vv, hg, hb))
  hue = hue * (range_ > 0)
  return hue + (hue < 0), sat, vv


def _byol_hsv_to_rgb(h, s, v):
  c = s * v
  m = v - c
  dh = (h % 1.0) * 6.0
  x = c * (1 - np.abs(dh % 2.0 - 1))
  hcat = np.floor(dh).astype(np.int32)
  rr = np.where((hcat == 0) | (hcat == 5), c, np.where((hcat == 1) | (hcat == 4), x, 0)) + m
  gg = np.where((hcat == 1) | (hcat == 2), c, np.where((hcat == 0) | (hcat == 3), x, 0)) + m
  bb = np.where((hcat == 3) | (hcat == 4), c, np.where((hcat == 2) | (hcat == 5), x, 0)) + m
  return np.stack([rr, gg, bb], axis=-1)


def _byol_saturation(x, factor):
  h, s, v = _byol_rgb_to_hsv(x[..., 0], x[..., 1], x[..., 2])
  return np.clip(_byol_hsv_to_rgb(h, np.clip(s * factor, 0.0, 1.0), v), 0.0, 1.0)


def _byol_hue(x, delta):
  h, s, v = _byol_rgb_to_hsv(x[..., 0], x[..., 1], x[..., 2])
  return np.clip(_byol_hsv_to_rgb((h + delta) % 1.0, s, v), 0.0, 1.0)


def _colour_image() -> np.ndarray:
  """[6, 5, 3] in [0, 1] with grey, black, white and pure colours among random pixels."""
  x = np.random.default_rng(2).uniform(size=(6, 5, 3)).astype(np.float32)
  x[0, :5] = [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 0.7, 0.7]]
  return x


_FACTORS = (0.0, 0.3, 1.0, 1.6)
_DELTAS = (-0.45, -0.1, 0.0, 0.25)


@pytest.mark.parametrize(
  'ours, reference, values',
  [
    (augment._scale_brightness, _tv_brightness, _FACTORS),
    (augment._gray_contrast, _tv_contrast, _FACTORS),
    (augment._blend_saturation, _tv_saturation, _FACTORS),
    (augment._adjust_hue, _tv_hue, _DELTAS),
    (augment._shift_brightness, _byol_brightness, _DELTAS),
    (augment._channel_contrast, _byol_contrast, _FACTORS),
    (augment._hsv_saturation, _byol_saturation, _FACTORS),
    (augment._adjust_hue, _byol_hue, _DELTAS),
  ],
  ids=[
    'torchvision_brightness',
    'torchvision_contrast',
    'torchvision_saturation',
    'torchvision_hue',
    'byol_brightness',
    'byol_contrast',
    'byol_saturation',
    'byol_hue',
  ],
)
def test_colour_op_matches_its_reference(ours, reference, values):
  """Each op on fixed factors (deltas for hue and additive brightness), clipped to [0, 1] as
  `_color_jitter` does after every op."""
  x, op = _colour_image(), jax.jit(ours)
  for value in values:
    got = np.clip(op(x, value), 0.0, 1.0)
    np.testing.assert_allclose(got, reference(x, value), atol=1e-5, err_msg=f'value {value}')


def _tv_factor(u, r):
  """torchvision ColorJitter's factor range [max(0, 1 - r), 1 + r], at uniform u."""
  return max(0.0, 1.0 - r) + (1.0 + r - max(0.0, 1.0 - r)) * u


def _delta(u, r):
  return -r + 2 * r * u


# Per family: the (brightness, contrast, saturation, hue) ops of the references, each taking
# (image, uniform, range). 'ours' mixes torchvision's brightness and saturation with BYOL's
# contrast.
_JITTER_REFERENCES = {
  'torchvision_bilinear': (
    lambda x, u, r: _tv_brightness(x, _tv_factor(u, r)),
    lambda x, u, r: _tv_contrast(x, _tv_factor(u, r)),
    lambda x, u, r: _tv_saturation(x, _tv_factor(u, r)),
    lambda x, u, r: _tv_hue(x, _delta(u, r)),
  ),
  'byol': (
    lambda x, u, r: _byol_brightness(x, _delta(u, r)),
    lambda x, u, r: _byol_contrast(x, 1 - r + 2 * r * u),
    lambda x, u, r: _byol_saturation(x, 1 - r + 2 * r * u),
    lambda x, u, r: _byol_hue(x, _delta(u, r)),
  ),
  'ours': (
    lambda x, u, r: _tv_brightness(x, _tv_factor(u, r)),
    lambda x, u, r: _byol_contrast(x, _tv_factor(u, r)),
    lambda x, u, r: _tv_saturation(x, _tv_factor(u, r)),
    lambda x, u, r: _tv_hue(x, _delta(u, r)),
  ),
}
_JITTER_REFERENCES['torchvision_bicubic'] = _JITTER_REFERENCES['torchvision_bilinear']
# SimCLRv2 (simclr tf2/data_util.py lines 33-43): BYOL's ops but brightness x U[1 - r, 1 + r].
_JITTER_REFERENCES['simclr'] = (
  lambda x, u, r: _tv_brightness(x, _tv_factor(u, r)),
  *_JITTER_REFERENCES['byol'][1:],
)


@pytest.mark.parametrize('family', sorted(augment.FAMILIES))
def test_color_jitter_is_the_family_ops_in_a_random_order(family):
  """uniforms[0:4] set the four ops' factors within `ranges`, the order of uniforms[4:8] the
  order of the ops (a random permutation, as ColorJitter's randperm and BYOL's shuffle)."""
  x, ranges = _colour_image(), (0.4, 0.6, 0.5, 0.1)
  jitter = jax.jit(augment._color_jitter, static_argnames=('ranges', 'family'))
  for u in np.random.default_rng(3).uniform(size=(6, 8)).astype(np.float32):
    expected = x
    for op in np.argsort(u[4:8]):
      expected = _JITTER_REFERENCES[family][op](expected, u[op], ranges[op])
    got = jitter(u, x, ranges=ranges, family=augment.FAMILIES[family])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _tv_crop_params(draws, position, height, width, scale, ratio):
  """torchvision RandomResizedCrop.get_params with its random numbers given: draws [tries, 2]
  of uniforms for the area and the log-ratio, position [2] for torch.randint's offsets."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for area_u, ratio_u in draws:
    target_area = area * (scale[0] + (scale[1] - scale[0]) * float(area_u))
    aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * float(ratio_u))
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    if 0 < w <= width and 0 < h <= height:
      i = int(float(position[0]) * (height - h + 1))
      j = int(float(position[1]) * (width - w + 1))
      return i, j, h, w
  # Fallback to central crop
  in_ratio = float(width) / float(height)
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:  # whole image
    w = width
    h = height
  return (height - h) // 2, (width - w) // 2, h, w


def _jax_crop_params(draws, positions, height, width, spec):
  """`augment._torchvision_crop_box` over a batch: [N, tries, 2], [N, 2] -> [N, 4] ints."""
  boxes = jax.jit(jax.vmap(lambda d, p: augment._torchvision_crop_box(d, p, height, width, spec)))(
    draws, positions
  )
  return np.stack([np.asarray(b) for b in boxes], axis=-1)


@pytest.mark.parametrize(
  'height, width, scale, ratio',
  [
    (16, 12, (0.08, 1.0), (3 / 4, 4 / 3)),  # Mostly the first try.
    (8, 40, (0.5, 1.0), (3 / 4, 4 / 3)),  # Wide: many fall back, cut to ratio 4/3.
    (40, 8, (0.5, 1.0), (3 / 4, 4 / 3)),  # Tall: cut to ratio 3/4.
    (16, 16, (0.9, 1.0), (3.0, 4.0)),  # Nothing fits: always the fallback.
  ],
)
def test_torchvision_crop_boxes_match_get_params(height, width, scale, ratio):
  """The same boxes as the port of get_params on the same uniforms; they lie inside the image,
  and the boxes of a try (not the fallback) have an area and a ratio in range up to rounding."""
  rng = np.random.default_rng(4)
  draws = rng.uniform(size=(500, 10, 2)).astype(np.float32)
  positions = rng.uniform(size=(500, 2)).astype(np.float32)
  spec = CropSpec(1, 8, scale, ratio)
  got = _jax_crop_params(draws, positions, height, width, spec)
  expected = [_tv_crop_params(d, p, height, width, scale, ratio) for d, p in zip(draws, positions)]
  np.testing.assert_array_equal(got, expected)
  top, left, h, w = got.T
  assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
  assert (top + h <= height).all() and (left + w <= width).all()
  central = _tv_crop_params(np.ones((0, 2)), None, height, width, scale, ratio)
  tried = ~np.all(got == central, axis=1)
  # Rounding each side by up to 1/2 pixel moves the area by up to (h + w) / 2 + 1/4.
  slack = ((h + w) / 2 + 0.25)[tried]
  area = (h * w)[tried]
  assert (area >= scale[0] * height * width - slack).all()
  assert (area <= scale[1] * height * width + slack).all()
  aspect = (w / h)[tried]
  assert (aspect >= ratio[0] * (1 - 1 / h[tried]) - 1 / h[tried]).all()
  assert (aspect <= ratio[1] * (1 + 1 / h[tried]) + 1 / h[tried]).all()


def test_torchvision_crop_takes_the_first_of_ten_tries_that_fits():
  """On 16 x 16, area 1 at ratio 2 (23 x 11 pixels) does not fit, area 1/2 at ratio 1 does."""
  spec = CropSpec(1, 8, scale=(0.5, 1.0), ratio=(0.5, 2.0))
  too_wide, fits = [1.0, 1.0], [0.0, 0.5]
  draws = np.array([[too_wide] * 9 + [fits], [too_wide] * 10], np.float32)
  got = _jax_crop_params(draws, np.zeros((2, 2), np.float32), 16, 16, spec)
  np.testing.assert_array_equal(got, [[0, 0, 11, 11], [0, 0, 16, 16]])  # Else the whole image.


def test_torchvision_family_redraws_boxes_that_do_not_fit():
  """On 12 x 40 images, one draw of 20-40% of the area fails to fit about 36% of the time, so
  with one try about 23 of these 64 views would be the central fallback; with ten, ~0.002."""
  images = np.random.default_rng(5).integers(0, 256, (32, 12, 40, 3), dtype=np.uint8)
  crops = CropSpec(2, 8, scale=(0.2, 0.4))
  cfg = _plain_config(global_crops=crops, family='torchvision_bilinear')
  views = np.stack(_multi_crop(jax.random.key(0), images, cfg=cfg))
  central_box = (0, 12, 12, 16)  # get_params' fallback: the full height at ratio 4/3.
  central = jax.vmap(lambda x: augment._crop_and_resize(x, central_box, 8))(_unit(images))
  fallbacks = np.isclose(_denormalize(views), central, atol=1e-5).all(axis=(2, 3, 4))
  assert fallbacks.sum() <= 2
