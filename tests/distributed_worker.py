"""One process of a multi-process check (see test_distributed.py); not a test on its own.

python tests/distributed_worker.py OUT_DIR COORDINATOR NUM_PROCESSES PROCESS_ID

Joins the group through `parallel.initialize`, builds global arrays from per-process rows
and writes what every process computed to OUT_DIR/process_<id>.npz.
"""

import functools
import os
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P


def main(out_dir: str, coordinator: str, num_processes: int, process_id: int) -> None:
  from semi_ssl import parallel
  from semi_ssl.ops import knn, sinkhorn

  parallel.initialize(coordinator, num_processes, process_id)
  assert jax.process_count() == num_processes
  mesh = parallel.create_mesh()
  gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
  rows = parallel.process_slice(32)
  scores = np.random.default_rng(0).normal(size=(32, 10)).astype(np.float32) * 5
  scores_global = parallel.global_batch(scores[rows], mesh)
  per_device = jax.jit(
    jax.shard_map(
      functools.partial(sinkhorn.sinkhorn, axis_name=parallel.DATA_AXIS),
      mesh=mesh,
      in_specs=P(parallel.DATA_AXIS),
      out_specs=P(parallel.DATA_AXIS),
    )
  )

  queries, keys, key_labels = knn_inputs()
  knn_per_device = jax.jit(
    jax.shard_map(
      functools.partial(knn.knn_pseudo_labels, k=5, num_classes=4, axis_name=parallel.DATA_AXIS),
      mesh=mesh,
      in_specs=P(parallel.DATA_AXIS),
      out_specs=P(parallel.DATA_AXIS),
    )
  )
  labels, votes = knn_per_device(
    *(
      parallel.global_batch(x[parallel.process_slice(len(x))], mesh)
      for x in (queries, keys, key_labels)
    )
  )
  np.savez(
    os.path.join(out_dir, f'process_{process_id}.npz'),
    sinkhorn_jit=gather(sinkhorn.sinkhorn(scores_global)),
    sinkhorn_shard_map=gather(per_device(scores_global)),
    knn_labels=gather(labels),
    knn_votes=gather(votes),
  )


def knn_inputs():
  """Queries [32, 8], keys [64, 8] and their labels [64] in 0..3."""
  rng = np.random.default_rng(1)
  return (
    rng.normal(size=(32, 8)).astype(np.float32),
    rng.normal(size=(64, 8)).astype(np.float32),
    rng.integers(0, 4, 64).astype(np.int32),
  )


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
