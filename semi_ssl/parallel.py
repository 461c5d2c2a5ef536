"""Device mesh, shardings, and global arrays built from per-process data.

One code path serves 1 CPU, 8 GPUs and a TPU pod: the batch axis of every input is split
over the mesh's `data` axis and parameters are replicated; collectives come from jit (GSPMD).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def create_mesh() -> Mesh:
  """A 1-D mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


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
