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

import jax
import ml_collections
from flax import nnx

from semi_ssl import checkpoint
from semi_ssl.errors import require


def check_config(section: ml_collections.ConfigDict, name: str) -> None:
  """Raises ValueError unless `section` (config.<name>) names exactly one source."""
  require(
    bool(section.workdir) != bool(section.stage),
    f'config.{name}: set exactly one of workdir (a run whose latest checkpoint is the '
    f'teacher) and stage (an earlier stage of this run); got workdir={section.workdir!r}, '
    f'stage={section.stage!r}.',
  )


@dataclasses.dataclass(frozen=True)
class FrozenTeacher:
  """The network `create(rngs)` whose every parameter and model-state leaf comes from the
  latest checkpoint of `workdir` (paths, shapes: as `init_from` copies them).

  `init` gives the method state its place (a fresh network, inside `jit`); `load`, which a fresh
  run calls once its state is built (`Method.load_state`), fills it from the checkpoint. A
  resumed run restores it from its own checkpoint, as the rest of its state.
  """

  create: Callable[[nnx.Rngs], nnx.Module]
  workdir: str

  @functools.cached_property
  def graphdef(self):
    return nnx.graphdef(nnx.eval_shape(lambda: self.create(nnx.Rngs(0))))

  def init(self) -> dict[str, nnx.State]:
    """{'params', 'model_state'} of a freshly initialised teacher network."""
    params, model_state = nnx.split(self.create(nnx.Rngs(0)), nnx.Param, ...)[1:]
    return {'params': params, 'model_state': model_state}

  def load(self, teacher: dict[str, nnx.State]) -> dict[str, nnx.State]:
    """`teacher` (as `init` gives it, placed as the trainer stores it) with every leaf from the
    checkpoint; raises UserError naming a missing checkpoint, path or shape mismatch."""
    source = checkpoint.load_variables(self.workdir)
    top_level = lambda state: tuple(nnx.to_pure_dict(state))
    return {
      'params': checkpoint.copy_subtrees(
        teacher['params'], source['params'], top_level(teacher['params'])
      ),
      'model_state': checkpoint.copy_subtrees(
        teacher['model_state'],
        source['model_state'],
        top_level(teacher['model_state']),
        each_prefix_matches=False,
      ),
    }

  def model(self, teacher: dict[str, nnx.State]) -> nnx.Module:
    """The teacher network of the method state's `teacher`, for a forward pass (`train=False`:
    BatchNorm's running statistics); its outputs carry no gradient to it."""
    frozen = jax.tree.map(jax.lax.stop_gradient, teacher)
    return nnx.merge(self.graphdef, frozen['params'], frozen['model_state'])
