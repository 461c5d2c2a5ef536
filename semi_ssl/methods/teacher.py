"""An EMA teacher (Daino, Suave's EMA encoder) or target network (SemPPL, BYOL): a copy of
the student's parameters in the method state, moved towards the student after every step,
and run through the student's graph (not a method)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from semi_ssl.ops.ema import cosine_momentum, ema


@dataclasses.dataclass(frozen=True)
class EMATeacher:
  """EMA of the student's parameters with momentum `momentum`, constant, or with
  `cosine_steps` > 0 rising from `momentum` to 1 over that many steps on a cosine (BYOL,
  DINO)."""

  momentum: float
  cosine_steps: int = 0

  def init(self, params: nnx.State) -> nnx.State:
    """The teacher's parameters at step 0: a copy of the student's."""
    return jax.tree.map(jnp.copy, params)

  def update(self, teacher: nnx.State, params: nnx.State, step: jax.Array) -> nnx.State:
    """The teacher after the optimiser update of step `step` gave the student `params`."""
    momentum = (
      cosine_momentum(step, self.cosine_steps, self.momentum)
      if self.cosine_steps
      else self.momentum
    )
    return ema(teacher, params, momentum)

  def model(self, student: nnx.Module, teacher: nnx.State) -> nnx.Module:
    """The student's graph with the teacher's parameters, for the teacher's forward pass.

    Its other state (BatchNorm statistics) is a copy of the student's: what the teacher's
    passes write there is dropped. Outputs carry gradients unless the caller stops them.
    """
    graphdef, _, rest = nnx.split(student, nnx.Param, ...)
    return nnx.merge(graphdef, teacher, rest, copy=True)
