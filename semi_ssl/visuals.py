"""Images a run writes for a researcher to look at (`metric_writer.RunWriter.images`): a grid
of the augmented views of the first batch, per kind of crop, and the test confusion matrix."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from semi_ssl import parallel
from semi_ssl.data import augment

VIEW_SIDE = 64  # Pixels: a smaller view is shown enlarged to about this side.
CONFUSION_SIDE = 256  # Pixels: a confusion matrix of fewer classes is enlarged to about this.


def enlarge(image: jax.Array, side: int, min_side: int) -> jax.Array:
  """[H, W, ...] with each pixel repeated r = max(1, min_side // side) times along H and W, so
  that a part `side` pixels wide becomes about `min_side` wide: [H * r, W * r, ...]."""
  repeats = max(1, min_side // side)
  return jnp.repeat(jnp.repeat(image, repeats, axis=0), repeats, axis=1)


def image_grid(cells: jax.Array) -> jax.Array:
  """[R, K, H, W, C] -> [R * (H + 1), K * (W + 1), C]: R rows of K images, each followed by a
  white line of one pixel below and to the right."""
  rows, columns, height, width, _ = cells.shape
  framed = jnp.pad(cells, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)), constant_values=1.0)
  return framed.transpose(0, 2, 1, 3, 4).reshape(rows * (height + 1), columns * (width + 1), -1)


def _view_grids(key, images, cfg: augment.AugmentConfig, name: str) -> dict:
  """{name_global, name_local (with local crops)}: [N, H, W, C] uint8 images as rows, each the
  image resized to the crop's side, then its views of that kind, in [0, 1]."""
  views = augment.multi_crop(key, images, cfg)
  mean, std = jnp.asarray(cfg.mean), jnp.asarray(cfg.std)
  kinds = {'global': (cfg.global_crops, views[: cfg.global_crops.num])}
  if cfg.local_crops is not None:
    kinds['local'] = (cfg.local_crops, views[cfg.global_crops.num :])
  grids = {}
  for kind, (spec, kind_views) in kinds.items():
    shape = (len(images), spec.size, spec.size, images.shape[-1])
    original = jax.image.resize(images.astype(jnp.float32) / 255, shape, 'linear')
    shown = [original] + [jnp.clip(view * std + mean, 0.0, 1.0) for view in kind_views]
    grid = image_grid(jnp.stack(shown, axis=1))
    grids[f'{name}_{kind}'] = enlarge(grid, spec.size, VIEW_SIDE)
  return grids


def augmentation_grids(
  key: jax.Array, batch: dict, cfg: augment.AugmentConfig, mesh: Mesh, num_images: int = 4
) -> dict:
  """{'augment/labelled_global', 'augment/labelled_local', 'augment/unlabelled_global', ...:
  float [rows, columns, C] in [0, 1]} for the crop kinds the run has: the first `num_images`
  images of each part of `batch` (uint8 [B, H, W, C] under 'images'), one per row, resized to
  the crop's side, then the views `augment.multi_crop` makes of them under `key`, as the
  training step makes them (with `cfg.labelled_views` for labelled images); views smaller than
  VIEW_SIDE enlarged. Jitted, the result replicated on `mesh`: every process of a run calls it,
  as they share the batch."""

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def grids(key, batch):
    labelled_key, unlabelled_key = jax.random.split(key)
    out = _view_grids(
      labelled_key, batch['labelled']['images'][:num_images], cfg.labelled_views, 'labelled'
    )
    if 'unlabelled' in batch:
      out.update(
        _view_grids(unlabelled_key, batch['unlabelled']['images'][:num_images], cfg, 'unlabelled')
      )
    return {f'augment/{name}': grid for name, grid in out.items()}

  return {name: np.asarray(grid) for name, grid in grids(key, batch).items()}


def confusion_image(confusion: np.ndarray) -> np.ndarray:
  """[C, C] counts (rows true classes) -> float [S, S, 1] in [0, 1], enlarged to about
  CONFUSION_SIDE pixels: each row divided by its largest count, so that a class's
  mistakes show however few its test images; white is the class's most frequent prediction,
  black none."""
  rows = confusion.astype(np.float32)
  shares = rows / np.maximum(rows.max(axis=1, keepdims=True), 1)
  return np.asarray(enlarge(shares[..., None], len(confusion), CONFUSION_SIDE))
