"""Exponential moving averages of parameters (EMA teachers and targets) as pure functions."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def ema(average: Any, new: Any, momentum: jax.Array | float) -> Any:
  """momentum * average + (1 - momentum) * new, leaf by leaf of two like pytrees."""
  return jax.tree.map(lambda a, n: momentum * a + (1.0 - momentum) * n, average, new)


def cosine_momentum(step: jax.Array, num_steps: int, base_momentum: float) -> jax.Array:
  """EMA momentum of step `step`: cosine from `base_momentum` (step 0) to 1 (`num_steps`),
  as BYOL and DINO schedule their targets and teachers."""
  progress = jnp.clip(step / num_steps, 0.0, 1.0)
  return 1.0 - (1.0 - base_momentum) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0
