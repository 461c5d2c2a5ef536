"""Mixup and CutMix (ops/mixup.py) against a numpy port of the official src/mixup.py, and the
labelled views' 'extend' and 'replace' modes (methods/views.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semi_ssl.methods import views
from semi_ssl.ops import losses, mixup


def official_cutmix(x1, x2, lam, cy, cx):
  """github.com/pietroastolfi/suave-daino src/mixup.py, `rand_bbox` (margin 0) with the centre
  given, `cutmix_bbox_and_lam` (correct_lam) and `_mix_batch`, on NHWC numpy images."""
  img_h, img_w = x1.shape[1:3]
  ratio = np.sqrt(1 - lam)
  cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
  yl, yh = np.clip(cy - cut_h // 2, 0, img_h), np.clip(cy + cut_h // 2, 0, img_h)
  xl, xh = np.clip(cx - cut_w // 2, 0, img_w), np.clip(cx + cut_w // 2, 0, img_w)
  lam = 1.0 - (yh - yl) * (xh - xl) / float(img_h * img_w)
  x = x1.copy()
  x[:, yl:yh, xl:xh] = x2[::-1][:, yl:yh, xl:xh]
  return x, lam


def test_cutmix_pastes_the_official_box_with_area_corrected_lambda():
  rng = np.random.default_rng(0)
  x1, x2 = rng.normal(size=(2, 4, 7, 10, 3)).astype(np.float32)
  cases = [(lam, cy, cx) for lam in rng.uniform(size=6) for cy, cx in [(0, 0), (3, 5), (6, 9)]]
  cases.append((0.0, 3, 5))  # The largest box, 7 x 10: clipped at the bottom and right.
  for lam, cy, cx in cases:
    lam = np.float32(lam)
    weights, got_lam = mixup.cutmix_weights((jnp.int32(cy), jnp.int32(cx)), lam, 7, 10)
    expected, expected_lam = official_cutmix(x1, x2, np.float64(lam), cy, cx)
    np.testing.assert_array_equal(mixup.mix(x1, x2, weights), expected)
    np.testing.assert_allclose(got_lam, expected_lam, rtol=1e-6)


def test_mixup_blends_with_the_mirror_and_targets_share_its_lambda():
  rng = np.random.default_rng(1)
  x1, x2 = rng.normal(size=(2, 5, 4, 4, 1)).astype(np.float32)
  t1, t2 = rng.uniform(size=(2, 5, 3)).astype(np.float32)
  weights = jnp.full((4, 4), 0.3)
  np.testing.assert_allclose(mixup.mix(x1, x2, weights), 0.3 * x1 + 0.7 * x2[::-1], rtol=1e-6)
  np.testing.assert_allclose(mixup.mix_targets(t1, t2, 0.3), 0.3 * t1 + 0.7 * t2[::-1], rtol=1e-6)


@jax.jit
def _draws(keys):
  """pixel_weights of each key [N] with both alphas 1, with mixup only, with CutMix only."""
  draw = lambda **alphas: jax.vmap(lambda k: mixup.pixel_weights(k, 8, 8, **alphas))(keys)
  return (
    draw(mixup_alpha=1.0, cutmix_alpha=1.0),
    draw(mixup_alpha=1.0, cutmix_alpha=0.0)[0],
    draw(mixup_alpha=0.0, cutmix_alpha=1.0)[0],
  )


def test_draws_switch_between_mixup_and_cutmix_as_the_official_code():
  """Both alphas 1: CutMix (0/1 weights) half the time (switch_prob 0.5), lam ~ Beta(1, 1)
  (mean 1/2, variance 1/12) for mixup; lam is always the first image's share of the pixels.
  One alpha 0: the other method only."""
  (weights, lam), only_mixup, only_cutmix = _draws(jax.random.split(jax.random.key(0), 4000))
  np.testing.assert_allclose(weights.mean(axis=(1, 2)), lam, rtol=1e-5, atol=1e-6)
  binary = np.all((weights == 0) | (weights == 1), axis=(1, 2))
  constant = np.all(weights == weights[:, :1, :1], axis=(1, 2))
  assert np.all(binary | constant)
  assert 0.45 < np.mean(binary & ~constant) < 0.55
  mixup_lam = lam[~binary]
  assert abs(mixup_lam.mean() - 0.5) < 0.03 and abs(mixup_lam.var() - 1 / 12) < 0.01
  assert np.all(only_mixup == only_mixup[:, :1, :1])
  assert np.all((only_cutmix == 0) | (only_cutmix == 1))
  assert not np.all(only_cutmix == 1)


@pytest.mark.parametrize('cutmix', [False, True], ids=['mixup', 'cutmix'])
@pytest.mark.parametrize('mode', ['extend', 'replace'])
def test_labelled_mixes_share_one_lambda_with_their_targets(mode, cutmix):
  """Image i is constant i + 1 and labelled i (4 images, 2 views, of two sizes for mixup): its
  mix holds image i with the target's weight on label i (pixel share for CutMix, blend
  weight for mixup) and image 3 - i with the rest. 'extend' keeps the clean images and their
  targets first."""
  image = lambda side: jnp.broadcast_to(
    jnp.arange(1.0, 5.0)[:, None, None, None], (4, side, side, 1)
  )
  clean_views = [image(6), image(6 if cutmix else 4) + 10.0]
  targets = losses.class_targets(jnp.arange(4), 4, 5, smoothing=0.0)
  alphas = dict(mixup_alpha=0.0 if cutmix else 1.0, cutmix_alpha=1.0 if cutmix else 0.0)
  got_targets, got_views = views.mix_labelled(
    jax.random.key(3), clean_views, targets, **alphas, mode=mode
  )
  rows = 8 if mode == 'extend' else 4
  assert got_targets.shape == (rows, 5) and all(v.shape[0] == rows for v in got_views)
  if mode == 'extend':
    np.testing.assert_array_equal(got_targets[:4], targets)
    for got, clean in zip(got_views, clean_views):
      np.testing.assert_array_equal(got[:4], clean)
  mixed_targets, mixed_views = got_targets[-4:], [v[-4:] for v in got_views]
  lam = mixed_targets[0, 0]
  assert 0.0 < lam < 1.0
  for i in range(4):
    expected = np.zeros(5)
    expected[i] += lam
    expected[3 - i] += 1 - lam
    np.testing.assert_allclose(mixed_targets[i], expected, rtol=1e-6)
    for offset, view in zip((0.0, 10.0), mixed_views):
      own, mirror = i + 1 + offset, 4 - i + offset
      if cutmix:
        assert set(np.unique(view[i])) == {own, mirror}
        np.testing.assert_allclose(np.mean(view[i] == own), lam, rtol=1e-6)
      else:
        np.testing.assert_allclose(view[i], lam * own + (1 - lam) * mirror, rtol=1e-5)
