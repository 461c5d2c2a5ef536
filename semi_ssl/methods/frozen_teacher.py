"""A frozen teacher (SimCLRv2's distillation, S4L's MOAM): a network of any architecture whose
parameters and BatchNorm statistics come from another stage's or run's latest checkpoint, held
in the method state, outside the gradient, and run in eval mode (not a method).

Config section (e.g. `config.simclrv2.teacher`): `workdir` (a run's workdir) or `stage` (an
earlier stage of this run, turned into its workdir by `main.stage_plan`), and `model` (the
teacher's `config.model`: backbone, width, stem, dtype).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import nnx

from semi_ssl import checkpoint
from semi_ssl.errors import require

PyTree = Any


def check_config(section: ml_collections.ConfigDict, name: str) -> None:
  """Raises ValueError unless `section` (config.<name>) names exactly one source."""
  require(
    bool(section.workdir) != bool(section.stage),
    f'config.{name}: set exactly one of workdir (a run whose latest checkpoint is the '
    f'teacher) and stage (an earlier stage of this run); got workdir={section.workdir!r}, '
    f'stage={section.stage!r}.',
  )


@functools.cache
def _load(workdir: str) -> dict[str, dict]:
  """`checkpoint.load_variables` (host arrays), also when called while tracing (`init_state`
  runs inside `jit` and `eval_shape`): the checkpoint is read eagerly, once per process."""
  with jax.ensure_compile_time_eval():
    return jax.device_get(checkpoint.load_variables(workdir))


@dataclasses.dataclass(frozen=True)
class FrozenTeacher:
  """The network `create(rngs)` with every parameter and model-state leaf from the latest
  checkpoint of `workdir` (paths, shapes: as `init_from` copies them)."""

  create: Callable[[nnx.Rngs], nnx.Module]
  workdir: str

  @functools.cached_property
  def graphdef(self):
    return nnx.graphdef(nnx.eval_shape(lambda: self.create(nnx.Rngs(0))))

  def init(self) -> dict[str, nnx.State]:
    """{'params', 'model_state'} of the checkpoint, for the method state (read from disk once
    per process; inside `jit` they are constants of the program)."""
    params, model_state = nnx.split(
      nnx.eval_shape(lambda: self.create(nnx.Rngs(0))), nnx.Param, ...
    )[1:]
    source = _load(self.workdir)
    top_level = lambda state: tuple(nnx.to_pure_dict(state))
    return {
      'params': checkpoint.copy_subtrees(params, source['params'], top_level(params)),
      'model_state': checkpoint.copy_subtrees(
        model_state, source['model_state'], top_level(model_state), each_prefix_matches=False
      ),
    }

  def model(self, teacher: dict[str, nnx.State]) -> nnx.Module:
    """The teacher network of the method state's `teacher` (`init`), for a forward pass
    (`train=False`: BatchNorm's running statistics); wrap outputs in `stop_gradient`."""
    frozen = jax.tree.map(jax.lax.stop_gradient, teacher)
    return nnx.merge(self.graphdef, frozen['params'], frozen['model_state'])
