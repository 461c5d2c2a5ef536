"""Time of `knn_pseudo_labels` (4096 queries, 65,536 keys of dimension 128) beside brute-force
numpy on the same machine.

    python -m benchmarks.bench_knn
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.bench_knn

Rows: numpy (normalise, one matmul, argpartition, vote, in blocks of 1024 queries), the jitted
op on one device, and, when there are several devices, the op split over all of them with
`jax.shard_map` (queries and keys on the data axis, as SemPPL runs it). Every row's labels are
checked against numpy's. Each time is the median of REPEATS calls after one warm-up call.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from semi_ssl.ops.knn import knn_pseudo_labels

NUM_QUERIES, NUM_KEYS, DIM = 4096, 65_536, 128
K, NUM_CLASSES = 20, 1000
REPEATS = 5
BLOCK = 1024  # numpy queries per matmul: 256 MiB of scores.


def numpy_knn(queries: np.ndarray, keys: np.ndarray, key_labels: np.ndarray) -> np.ndarray:
  """Brute force: labels [N] of the cosine k-NN majority vote, ties by summed similarity."""
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  queries, keys = unit(queries), unit(keys)
  labels = []
  for start in range(0, len(queries), BLOCK):
    sims = queries[start : start + BLOCK] @ keys.T
    nearest = np.argpartition(-sims, K, axis=1)[:, :K]
    top = np.take_along_axis(sims, nearest, axis=1)
    rows = np.repeat(np.arange(len(sims)), K)
    cells = rows * NUM_CLASSES + key_labels[nearest].ravel()
    votes = np.bincount(cells, minlength=len(sims) * NUM_CLASSES).reshape(len(sims), -1)
    summed = np.bincount(cells, top.ravel(), minlength=len(sims) * NUM_CLASSES).reshape(
      len(sims), -1
    )
    tied = votes == votes.max(axis=1, keepdims=True)
    labels.append(np.argmax(np.where(tied, summed, -np.inf), axis=1))
  return np.concatenate(labels)


def median_ms(fn: Callable[[], object]) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(REPEATS):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def main() -> None:
  rng = np.random.default_rng(0)
  queries = rng.normal(size=(NUM_QUERIES, DIM)).astype(np.float32)
  keys = rng.normal(size=(NUM_KEYS, DIM)).astype(np.float32)
  key_labels = rng.integers(0, NUM_CLASSES, NUM_KEYS).astype(np.int32)
  devices = jax.devices()
  print(
    f'{NUM_QUERIES} queries, {NUM_KEYS} keys of dimension {DIM}, k={K}, '
    f'{NUM_CLASSES} classes; {len(devices)} x {devices[0].platform} '
    f'({devices[0].device_kind})'
  )

  want = numpy_knn(queries, keys, key_labels)
  rows = [('numpy brute force', median_ms(lambda: numpy_knn(queries, keys, key_labels)), 1.0)]
  vote = functools.partial(knn_pseudo_labels, k=K, num_classes=NUM_CLASSES)
  args = jax.device_put((queries, keys, key_labels), devices[0])
  runs = [('knn_pseudo_labels, 1 device', lambda: vote(*args))]
  if len(devices) > 1:
    mesh = Mesh(np.asarray(devices), ('data',))
    split = jax.jit(
      jax.shard_map(
        functools.partial(vote, axis_name='data'),
        mesh=mesh,
        in_specs=P('data'),
        out_specs=P('data'),
      )
    )
    sharded = jax.device_put((queries, keys, key_labels), NamedSharding(mesh, P('data')))
    runs.append((f'knn_pseudo_labels, {len(devices)} devices', lambda: split(*sharded)))
  for name, run in runs:
    agree = np.mean(np.asarray(run()[0]) == want)
    rows.append((name, median_ms(run), agree))

  print(f'{"":<32}{"ms":>10}{"x numpy":>10}{"labels = numpy":>16}')
  for name, ms, agree in rows:
    print(f'{name:<32}{ms:>10.1f}{rows[0][1] / ms:>10.2f}{100 * agree:>15.2f}%')


if __name__ == '__main__':
  main()
