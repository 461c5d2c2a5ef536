"""Multi-process start-up, device mesh, shardings, and global arrays from per-process data.

One code path serves 1 CPU, 8 GPUs and a TPU pod. The mesh is ('data', 'model'): the batch
axis of every input is split over all of its devices; with a `model` axis of 1 (the default)
the train state is replicated, with more (FSDP) each large array of the state is split along
it, so a device holds 1/model of the parameters and optimiser state. A method may place its
own state otherwise (`Method.state_sharding`, e.g. SemPPL's queue split over all devices).
Collectives come from jit (GSPMD). Several processes (TPU pod hosts, SLURM tasks) join
through `jax.distributed`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'
MODEL_AXIS = 'model'
# Arrays smaller than this stay replicated under FSDP: splitting them saves nothing.
_MIN_ELEMENTS_TO_SPLIT = 2**14
_SLURM_VARS = (
  'SLURM_JOB_ID',
  'SLURM_STEP_NODELIST',
  'SLURM_NTASKS',
  'SLURM_PROCID',
  'SLURM_LOCALID',
)


def cluster_environment() -> str | None:
  """'slurm' or 'cloud_tpu' when a scheduler started this process as one of a group."""
  if all(v in os.environ for v in _SLURM_VARS) and int(os.environ['SLURM_NTASKS']) > 1:
    return 'slurm'
  try:
    from jax._src.cloud_tpu_init import running_in_cloud_tpu_vm  # A file check, no network.
  except ImportError:
    return None
  return 'cloud_tpu' if running_in_cloud_tpu_vm else None


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Joins the processes of a multi-process run through `jax.distributed.initialize`.

  Explicit settings win; without them, SLURM and Cloud TPU are detected and JAX reads their
  variables; otherwise the run is one process and nothing happens. Call before any JAX
  computation.
  """
  explicit = {
    'coordinator_address': coordinator_address,
    'num_processes': num_processes,
    'process_id': process_id,
  }
  given = {k: v for k, v in explicit.items() if v is not None}
  if given:
    missing = sorted(set(explicit) - set(given))
    if missing:
      raise ValueError(
        f'--{" and --".join(missing)} missing: a multi-process run needs '
        '--coordinator_address, --num_processes and --process_id together.'
      )
    if not 0 <= process_id < num_processes:
      raise ValueError(
        f'--process_id={process_id} must be in [0, --num_processes={num_processes}).'
      )
    jax.distributed.initialize(**explicit)
  elif cluster_environment() is not None:
    jax.distributed.initialize()


def create_mesh(model_axis_size: int = 1) -> Mesh:
  """A (data, model) mesh over every device of every process."""
  devices = np.asarray(jax.devices())
  if devices.size % model_axis_size:
    raise ValueError(
      f'config.mesh.model={model_axis_size} does not divide the {devices.size} '
      'devices: use a divisor of the device count.'
    )
  return Mesh(devices.reshape(-1, model_axis_size), (DATA_AXIS, MODEL_AXIS))


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Axis `axis` (the batch axis; by default the leading one) split over every device of the
  mesh, the axes before it whole."""
  return NamedSharding(mesh, P(*(None,) * axis, tuple(mesh.axis_names)))


def state_sharding(abstract_state: Any, mesh: Mesh) -> Any:
  """Shardings for a train state (a pytree of arrays or ShapeDtypeStructs), FSDP style.

  Each array of at least 2**14 elements is split over the model axis along its largest
  dimension divisible by that axis' size; everything else is replicated.
  """
  size = dict(mesh.shape).get(MODEL_AXIS, 1)

  def sharding(x):
    spec = [None] * len(x.shape)
    if size > 1 and np.prod(x.shape) >= _MIN_ELEMENTS_TO_SPLIT:
      divisible = [i for i in np.argsort(x.shape)[::-1] if x.shape[i] % size == 0]
      if divisible:
        spec[divisible[0]] = MODEL_AXIS
    return NamedSharding(mesh, P(*spec))

  return jax.tree.map(sharding, abstract_state)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def process_slice(global_size: int) -> slice:
  """The rows of a global batch of `global_size` that this process loads."""
  per_process = global_size // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def global_batch(local: Any, mesh: Mesh) -> Any:
  """Per-process numpy rows (a pytree) -> global jax.Arrays sharded over the data axis."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)
