"""Orbax checkpoints: save every N steps, keep K, resume from the latest, copy subtrees.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so an
interrupted save never leaves a checkpoint that `all_steps` would list. A checkpoint that is
listed but cannot be read (a damaged disk, a file removed by hand, bytes changed: each step's
record holds a checksum of every array and of itself) is named in a warning and the one
before it is restored; a checkpoint of another model stops the run before anything compiles;
a failed write (full or read-only disk) stops it with the last complete step, in one line.

Workdirs are local paths or URLs (gs://BUCKET/run): every path here is an `epath.Path`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from semi_ssl import config_base
from semi_ssl.errors import CheckpointWriteError, UserError

CHECKPOINT_DIR = 'checkpoints'


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
  """WORKDIR/checkpoints: absolute for a local workdir (Orbax requires it), a URL as it is."""
  workdir = os.fspath(workdir)
  return epath.Path(workdir if '://' in workdir else os.path.abspath(workdir)) / CHECKPOINT_DIR


class Checkpointer:
  """The train state (a pytree of jax.Arrays) plus a small JSON record per step."""

  def __init__(self, workdir: str | os.PathLike, *, keep: int):
    self.directory = checkpoint_dir(workdir)
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      item_handlers={
        'state': ocp.StandardCheckpointHandler(),
        'record': ocp.JsonCheckpointHandler(),
      },
    )
    self.last_complete_step = self.manager.latest_step()
    _quiet_failed_io()

  def save(self, step: int, state: Any, record: dict) -> None:
    """Starts an asynchronous save of `state` and the JSON-able `record` (with their checksums);
    a failed write surfaces here or in `wait`."""
    self.wait()  # The previous save, so that `last_complete_step` is exact.
    with self._write_errors():
      self.manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          record=ocp.args.JsonSave(with_checksums(state, record)),
        ),
        force=True,
      )

  def wait(self) -> None:
    with self._write_errors():
      self.manager.wait_until_finished()
    self.last_complete_step = self.manager.latest_step()

  @contextlib.contextmanager
  def _write_errors(self):
    try:
      yield
    except Exception as error:  # Orbax and TensorStore wrap the OS error of a background write.
      reason = _os_error_reason(error)
      if reason is None:
        raise
      raise CheckpointWriteError(
        f'Could not write a checkpoint to {self.directory}: {reason}. Free '
        'space or make it writable (or choose another --workdir), then run the same command '
        'again: it resumes from the last complete checkpoint '
        f'({self.last_complete_step or "none yet"}).'
      ) from error

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
    """(state, record) of the newest readable checkpoint, or None when there is none.

    Restores into the shapes, dtypes and shardings of `abstract_state` (jax.ShapeDtypeStruct
    leaves). Raises UserError for a checkpoint of a different model, before reading any array.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    for step in steps:
      path = self.directory / str(step)
      try:
        saved = self.manager.item_metadata(step)['state']
        if saved is None:
          raise ValueError('no state metadata')
      except Exception as error:  # pylint: disable=broad-except
        self._set_aside(path, error)
        continue
      _check_same_structure(_flatten(saved), _flatten(abstract_state), path)
      try:
        out = self.manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()
          ),
        )
        record = verified_record(out['state'], out['record'])
      except Exception as error:  # pylint: disable=broad-except
        self._set_aside(path, error)
        continue
      self.manager.reload()
      self.last_complete_step = step
      return out['state'], record
    if steps:
      raise UserError(
        f'No checkpoint in {self.directory} can be read (steps {steps}): move that '
        'directory away to start over, or point --workdir elsewhere.'
      )
    return None

  def _set_aside(self, path: epath.Path, error: Exception) -> None:
    """Renames an unreadable checkpoint so that the run can write that step again."""
    aside = path.with_name(f'{path.name}.unreadable-{int(time.time())}')
    if jax.process_index() == 0:
      path.rename(aside)
    logging.warning(
      'Checkpoint %s is unreadable (%s); moved it to %s and trying the one before it.',
      path,
      short_reason(error),
      aside,
    )

  def close(self) -> None:
    with self._write_errors():
      self.manager.close()


def _os_error_reason(error: BaseException) -> str | None:
  """The OS's words for the failed write behind `error` ('No space left on device'), if any."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, OSError):
      return error.strerror or str(error)
    code = re.search(r"os_error_code='(\d+)'", str(error))  # TensorStore's wording.
    if code:
      return os.strerror(int(code.group(1)))
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


def short_reason(error: BaseException, limit: int = 200) -> str:
  """'Type: first line of the message', at most `limit` characters (TensorStore's messages
  run to dozens of lines)."""
  lines = str(error).strip().splitlines()
  reason = f'{type(error).__name__}: {lines[0] if lines else ""}'
  return reason if len(reason) <= limit else reason[: limit - 3] + '...'


class _WriteErrorLogs:
  """Drops Orbax's log records of a failed write (its background threads log the same error
  with its traceback, several times): `Checkpointer._write_errors` reports it in one line."""

  @staticmethod
  def filter(record) -> bool:
    in_orbax = f'{os.sep}orbax{os.sep}' in record.pathname
    return not (in_orbax and record.exc_info and _os_error_reason(record.exc_info[1]))


class _FailedIoLeftovers:
  """`sys.unraisablehook` less what an Orbax save or restore that failed leaves behind:
  TensorStore's callbacks into its closed event loop ('Event loop is closed', one traceback per
  pending write) and the errors of its pending reads (a TensorStore spec each). The failure
  itself is reported in one line."""

  def __init__(self, previous):
    self.previous = previous

  def __call__(self, unraisable) -> None:
    error, code = unraisable.exc_value, getattr(unraisable.object, 'cr_code', None)
    closed_loop = isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'
    orbax_coroutine = code is not None and f'{os.sep}orbax{os.sep}' in code.co_filename
    if not (closed_loop or orbax_coroutine):
      self.previous(unraisable)


def _quiet_failed_io() -> None:
  """Installs `_WriteErrorLogs` and `_FailedIoLeftovers`, once."""
  absl_logger = logging.get_absl_logger()
  if not any(isinstance(f, _WriteErrorLogs) for f in absl_logger.filters):
    absl_logger.addFilter(_WriteErrorLogs())
  if not isinstance(sys.unraisablehook, _FailedIoLeftovers):
    sys.unraisablehook = _FailedIoLeftovers(sys.unraisablehook)


def _array_checksum(x: jax.Array) -> jax.Array:
  """uint32 scalar: sum of w_i * (2i + 1) modulo 2**32 over the 32-bit words w_i of `x` (each
  element's bits, zero-extended when narrower, split when wider), i in row-major order. The
  weight is odd, so a change confined to one element always changes it."""
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  bits = x.dtype.itemsize * 8
  words = jax.lax.bitcast_convert_type(x, jnp.dtype(f'uint{min(bits, 32)}')).astype(jnp.uint32)
  index = jnp.zeros(words.shape, jnp.uint32)
  for axis, size in enumerate(words.shape):
    index = index * jnp.uint32(size) + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis)
  return jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)


_array_checksums = jax.jit(lambda leaves: [_array_checksum(x) for x in leaves])


def state_checksums(state: Any) -> dict[str, int]:
  """{'a/b/c': checksum} of every array of `state`, computed where the arrays are (each device
  reduces its shards); only the scalars reach the host."""
  flat = _flatten(state)
  return {
    path: int(value)
    for path, value in zip(flat, jax.device_get(_array_checksums(list(flat.values()))))
  }


def _record_checksum(record: dict) -> int:
  return zlib.crc32(json.dumps(record, sort_keys=True).encode())


def with_checksums(state: Any, record: dict) -> dict:
  """What is saved as a step's JSON record: `record` and the checksums of it and of `state`."""
  return {
    'record': record,
    'checksums': {'record': _record_checksum(record), 'state': state_checksums(state)},
  }


def verified_record(state: Any, saved: dict) -> dict:
  """The record of `with_checksums(state, record)` read back with `state`; raises ValueError
  when the record or an array is not what was written.

  A record of the format written before checksums were kept (`{'wall_seconds': s}` alone) is
  read with a warning that its arrays are not verified, so runs of that code still resume.
  """
  if isinstance(saved, dict) and saved.keys() == {'wall_seconds'}:
    logging.warning(
      'This checkpoint was written before checksums were kept: its arrays are not verified.'
    )
    return saved
  checksums = saved.get('checksums') if isinstance(saved, dict) else None
  if not isinstance(checksums, dict):
    raise ValueError('its record holds no checksums (replaced)')
  if checksums.get('record') != _record_checksum(saved.get('record')):
    raise ValueError('its record is not the one written')
  for path, checksum in state_checksums(state).items():
    if checksums['state'][path] != checksum:
      raise ValueError(f"the checksum of '{path}' differs from the one written")
  return saved['record']


def _check_same_structure(saved: dict[str, Any], expected: dict[str, Any], path: str) -> None:
  """Raises UserError naming the first leaf whose path or shape differs."""
  for name in sorted(set(saved) | set(expected)):
    if name not in saved or name not in expected:
      raise UserError(
        f"{path} was written by a different model or method: '{name}' exists only in "
        f'{"the checkpoint" if name in saved else "this config"}. Use a new --workdir for '
        'this config, or run the config that wrote it.'
      )
    if tuple(saved[name].shape) != tuple(expected[name].shape):
      raise UserError(
        f"{path} was written by a different model or method: '{name}' has shape "
        f'{tuple(saved[name].shape)} there but {tuple(expected[name].shape)} in this config. '
        'Use a new --workdir for this config, or run the config that wrote it.'
      )


def _flatten(tree: Any) -> dict[str, Any]:
  """{'a/b/c': leaf} of a pytree, NNX's `value` attribute level dropped."""
  return config_base.flatten(tree, '/', pytree=True, skip=('value',))


def read_state(path: str | os.PathLike) -> Any:
  """The saved train state at `path` (.../<step>/state) on one local device, whatever the
  devices and processes that wrote it."""
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
    checkpointer.metadata(path).item_metadata,
  )
  return checkpointer.restore(path, target)


def has_checkpoint(workdir: str | os.PathLike) -> bool:
  """Whether `workdir` holds a checkpoint, readable or not: a step directory named as Orbax
  names a finished one (temporary and set-aside ones are not). Lists the directory only."""
  directory = checkpoint_dir(workdir)
  return directory.is_dir() and any(path.name.isdigit() for path in directory.iterdir())


def load_variables(workdir: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """{'params': {path: array}, 'model_state': {path: array}} of `workdir`'s latest checkpoint
  (for init_from and a frozen teacher); the model state holds e.g. BatchNorm running statistics.
  The params are the Polyak average where the run kept one (`config.polyak_decay`): the weights
  it evaluated and reported, and those S4L's model predicts with (trainer.py lines 186-193)."""
  directory = checkpoint_dir(workdir)
  manager = (
    ocp.CheckpointManager(directory, item_handlers={'record': ocp.JsonCheckpointHandler()})
    if directory.is_dir()
    else None
  )
  step = manager.latest_step() if manager else None
  if step is None:
    raise UserError(
      f'init_from: no checkpoint in {directory}: train that run first, '
      'or point config.init_from.workdir at a workdir that has one.'
    )
  path = directory / str(step) / 'state'
  try:
    restored = read_state(path)
    verified_record(
      restored,
      manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))['record'],
    )
  except Exception as error:  # pylint: disable=broad-except
    raise UserError(
      f'init_from: cannot read {path} ({short_reason(error)}); re-run the source '
      'run or point config.init_from.workdir elsewhere.'
    ) from error
  if not isinstance(restored, dict) or 'params' not in restored:
    raise UserError(
      f'init_from: {path} is not a semi_ssl train state (no params): point '
      'config.init_from.workdir at a semi_ssl workdir.'
    )
  restored['params'] = restored.get('polyak_params', restored['params'])
  return {name: _flatten(restored.get(name) or {}) for name in ('params', 'model_state')}


def copy_subtrees(
  params: nnx.State,
  source: dict[str, np.ndarray],
  prefixes: tuple[str, ...],
  *,
  each_prefix_matches: bool = True,
) -> nnx.State:
  """`params` with every leaf under one of `prefixes` replaced by the same path of `source`.

  Raises UserError naming the first path that is missing from `source` or differs in shape,
  or (with `each_prefix_matches`) a prefix under which `params` has no leaf.
  """
  pure = nnx.to_pure_dict(params)
  flat = _flatten(pure)
  selected = [p for p in flat if any(p == q or p.startswith(q + '/') for q in prefixes)]
  for prefix in prefixes if each_prefix_matches else ():
    if not any(p == prefix or p.startswith(prefix + '/') for p in selected):
      raise UserError(
        f"init_from.paths: '{prefix}' matches no parameter of this model; "
        f'top-level names are {sorted({p.split("/")[0] for p in flat})}.'
      )
  for path in selected:
    if path not in source:
      raise UserError(
        f"init_from: parameter '{path}' {tuple(flat[path].shape)} is missing from "
        'the source checkpoint: check init_from.paths and the source model config.'
      )
    if tuple(source[path].shape) != tuple(flat[path].shape):
      raise UserError(
        f"init_from: parameter '{path}' has shape {tuple(source[path].shape)} in the "
        f'source checkpoint but {tuple(flat[path].shape)} here: the model configs differ.'
      )
    target = flat[path]  # Copied in this run's dtype and sharding.
    flat[path] = jax.device_put(
      np.asarray(source[path], dtype=target.dtype), getattr(target, 'sharding', None)
    )

  def rebuild(tree, prefix=''):
    if isinstance(tree, dict):
      return {k: rebuild(v, f'{prefix}{k}/') for k, v in tree.items()}
    return flat[prefix[:-1]]

  nnx.replace_by_pure_dict(params, rebuild(pure))
  return params
