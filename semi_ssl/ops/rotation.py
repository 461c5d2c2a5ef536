"""Rotations of square images by multiples of 90 degrees, with their labels (S4L's and
RotNet's pretext task)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

NUM_ROTATIONS = 4  # 0, 90, 180 and 270 degrees.


def rotate(images: jax.Array, turns: int) -> jax.Array:
  """[B, H, W, C] -> [B, W, H, C]: every image turned `turns` x 90 degrees counter-clockwise
  (jnp.rot90 on the spatial axes)."""
  return jnp.rot90(images, turns, axes=(1, 2))


def all_rotations(images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(rotated [4 B, H, W, C], labels int32 [4 B]) of square images [B, H, W, C]: row k B + i is
  image i turned k x 90 degrees and labelled k (the official code's four rotations, labels
  0..3: github.com/google-research/s4l preprocess.py lines 207-228, `get_rotate_preprocess`)."""
  size = images.shape[0]
  rotated = jnp.concatenate([rotate(images, k) for k in range(NUM_ROTATIONS)])
  return rotated, jnp.repeat(jnp.arange(NUM_ROTATIONS, dtype=jnp.int32), size)


def random_rotations(key: jax.Array, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(rotated [B, H, W, C], labels int32 [B]) of square images [B, H, W, C]: image i turned
  labels[i] x 90 degrees, labels drawn uniformly from 0..3."""
  labels = jax.random.randint(key, (images.shape[0],), 0, NUM_ROTATIONS, dtype=jnp.int32)
  every = jnp.stack([rotate(images, k) for k in range(NUM_ROTATIONS)])  # [4, B, H, W, C]
  return jnp.take_along_axis(every, labels[None, :, None, None, None], axis=0)[0], labels
