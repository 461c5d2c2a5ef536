"""Orbax checkpoints: save every N steps, keep K, resume from the latest, copy subtrees.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so an
interrupted save never leaves a checkpoint that `latest_step` would pick up.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

CHECKPOINT_DIR = 'checkpoints'


class Checkpointer:
  """The train state (a pytree of jax.Arrays) plus a small JSON record per step."""

  def __init__(self, workdir: str, *, keep: int):
    self.manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, record: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores into the shapes, dtypes and shardings of `abstract_state`."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
    return out['state'], out['record']

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _flatten(tree: Any) -> dict[str, Any]:
  """{'a/b/c': leaf} with NNX's `value` attribute level dropped."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path]
    flat['/'.join(k for k in keys if k != 'value')] = leaf
  return flat


def load_params(workdir: str) -> dict[str, np.ndarray]:
  """Flat {path: array} of the parameters in `workdir`'s latest checkpoint."""
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  step = ocp.CheckpointManager(directory).latest_step() if os.path.isdir(directory) else None
  if step is None:
    raise ValueError(f'init_from: no checkpoint in {directory}: train that run first, '
                     'or point config.init_from.workdir at a workdir that has one.')
  restored = ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), 'state'))
  return _flatten(restored['params'])


def copy_subtrees(params: nnx.State, source: dict[str, np.ndarray],
                  prefixes: tuple[str, ...]) -> nnx.State:
  """`params` with every leaf under one of `prefixes` replaced by the same path of `source`.

  Raises ValueError naming the first path that is missing from `source` or differs in shape.
  """
  pure = nnx.to_pure_dict(params)
  flat = _flatten(pure)
  selected = [p for p in flat if any(p == q or p.startswith(q + '/') for q in prefixes)]
  for prefix in prefixes:
    if not any(p == prefix or p.startswith(prefix + '/') for p in selected):
      raise ValueError(f"init_from.paths: '{prefix}' matches no parameter of this model; "
                       f"top-level names are {sorted({p.split('/')[0] for p in flat})}.")
  for path in selected:
    if path not in source:
      raise ValueError(f"init_from: parameter '{path}' {tuple(flat[path].shape)} is missing from "
                       'the source checkpoint: check init_from.paths and the source model config.')
    if tuple(source[path].shape) != tuple(flat[path].shape):
      raise ValueError(f"init_from: parameter '{path}' has shape {tuple(source[path].shape)} in the "
                       f'source checkpoint but {tuple(flat[path].shape)} here: the model configs differ.')
    flat[path] = jax.numpy.asarray(source[path], dtype=flat[path].dtype)

  def rebuild(tree, prefix=''):
    if isinstance(tree, dict):
      return {k: rebuild(v, f'{prefix}{k}/') for k, v in tree.items()}
    return flat[prefix[:-1]]

  nnx.replace_by_pure_dict(params, rebuild(pure))
  return params
