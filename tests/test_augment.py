"""Tests for semi_ssl.data.augment against plain numpy references."""

import colorsys
import dataclasses

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
# Compiled once per (config, shapes, sharding), so tests share compilations.
_multi_crop = jax.jit(augment.multi_crop, static_argnames='cfg')


def _plain_config(size: int = 16, num: int = 1, **overrides) -> AugmentConfig:
  """Whole-image crops resized to `size`, no other augmentation."""
  cfg = AugmentConfig(
    global_crops=CropSpec(num, size, scale=(1.0, 1.0), ratio=(1.0, 1.0)),
    local_crops=None,
    flip=False,
    color_jitter=0.0,
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
    color_jitter=1.0,
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


def _np_resize(x: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of [B, H, W, C] with a triangle filter widened when downsampling."""

  def weights(n_in):
    stretch = n_in / size
    centres = (np.arange(size) + 0.5) * stretch - 0.5
    distance = np.abs(centres[None, :] - np.arange(n_in)[:, None]) / max(stretch, 1.0)
    w = np.maximum(0.0, 1.0 - distance)
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
  cfg = _plain_config(color_jitter=1.0, grayscale_prob=1.0, mean=(0.5,), std=(0.2,))
  (view,) = _multi_crop(jax.random.key(0), images, cfg=cfg)
  np.testing.assert_allclose(_denormalize(view, (0.5,), (0.2,)), _unit(images), atol=1e-5)


def test_color_jitter_changes_most_images_and_stays_in_range():
  images = _images(batch=16)
  (view,) = _multi_crop(jax.random.key(0), images, cfg=_plain_config(color_jitter=1.0))
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
      flip=True,
      color_jitter=0.5,
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
  assert (cfg.flip, cfg.color_jitter, cfg.grayscale_prob) == (True, 0.5, 0.2)
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
    (dict(color_jitter=-1.0), 'color_jitter'),
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
