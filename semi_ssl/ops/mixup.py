"""Mixup and CutMix of a batch with a batch in reverse order, as pure functions.

The official Suave and Daino code (github.com/pietroastolfi/suave-daino at 9adf13d,
src/mixup.py, timm's `Mixup` in mode 'batch') draws one weight lam per call: with both alphas
positive, CutMix with probability `switch_prob` (lam ~ Beta(cutmix_alpha, cutmix_alpha)), else
mixup (lam ~ Beta(mixup_alpha, mixup_alpha)) (`_params_per_batch`, lines 135-151). Mixup gives
lam x1 + (1 - lam) x2[::-1]; CutMix pastes a box of x2[::-1] into x1 and corrects lam to the
share of x1's pixels left (`_mix_batch`, lines 192-204; `cutmix_bbox_and_lam`, lines 72-82).
Targets mix with the same lam and partner (`mixup_target`, lines 20-25).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# src/mixup.py `Mixup(switch_prob=0.5)`, as main_suave.py (lines 258, 332) and main_daino.py
# (lines 198, 256) build it.
SWITCH_PROB = 0.5


def draw_lambda(
  key: jax.Array, *, mixup_alpha: float, cutmix_alpha: float, switch_prob: float = SWITCH_PROB
) -> tuple[jax.Array, jax.Array]:
  """(lam float32 [], use_cutmix bool []): CutMix with probability `switch_prob` when both
  alphas are positive, always when only `cutmix_alpha` is, never when only `mixup_alpha` is;
  lam ~ Beta(alpha, alpha) of the chosen one (src/mixup.py `_params_per_batch`, prob 1)."""
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    raise ValueError(f'mixup_alpha={mixup_alpha} or cutmix_alpha={cutmix_alpha} must be > 0.')
  switch_key, lam_key = jax.random.split(key)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(switch_key) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
  return jax.random.beta(lam_key, alpha, alpha).astype(jnp.float32), use_cutmix


def cutmix_weights(
  center: tuple[jax.Array, jax.Array], lam: jax.Array, height: int, width: int
) -> tuple[jax.Array, jax.Array]:
  """(weights float32 [H, W]: 0 inside CutMix's box, 1 outside; lam float32 []: the share of
  ones, 1 - box area / (H W)). The box has sides int(H sqrt(1 - lam)) and int(W sqrt(1 - lam))
  around the pixel `center` = (row, column), clipped to the image (src/mixup.py `rand_bbox`,
  lines 28-48, margin 0, half-sides rounded down; `cutmix_bbox_and_lam`, correct_lam)."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  cy, cx = center
  top, bottom = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  left, right = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  area = (bottom - top) * (right - left)
  return (~inside).astype(jnp.float32), (1.0 - area / (height * width)).astype(jnp.float32)


def pixel_weights(
  key: jax.Array,
  height: int,
  width: int,
  *,
  mixup_alpha: float,
  cutmix_alpha: float,
  switch_prob: float = SWITCH_PROB,
) -> tuple[jax.Array, jax.Array]:
  """(weights float32 [H, W] of the first image per pixel, lam float32 []) of one draw:
  mixup, lam everywhere; or CutMix, `cutmix_weights` around a uniform pixel."""
  lam_key, y_key, x_key = jax.random.split(key, 3)
  lam, use_cutmix = draw_lambda(
    lam_key, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, switch_prob=switch_prob
  )
  center = jax.random.randint(y_key, (), 0, height), jax.random.randint(x_key, (), 0, width)
  box_weights, box_lam = cutmix_weights(center, lam, height, width)
  weights = jnp.where(use_cutmix, box_weights, jnp.full((height, width), lam))
  return weights, jnp.where(use_cutmix, box_lam, lam)


def mix(x1: jax.Array, x2: jax.Array, weights: jax.Array) -> jax.Array:
  """weights x1 + (1 - weights) x2[::-1]: [B, H, W, C] images, weights per pixel [H, W] or one
  weight [] -> [B, H, W, C] (x1 = x2: each image with its mirror, src/mixup.py `CollateMixup`)."""
  w = weights[:, :, None] if jnp.ndim(weights) else weights
  return (w * x1 + (1.0 - w) * x2[::-1]).astype(x1.dtype)


def mix_targets(t1: jax.Array, t2: jax.Array, lam: jax.Array) -> jax.Array:
  """lam t1 + (1 - lam) t2[::-1]: targets [B, K] of `mix(x1, x2, ...)` (`mixup_target`)."""
  return lam * t1 + (1.0 - lam) * t2[::-1]
