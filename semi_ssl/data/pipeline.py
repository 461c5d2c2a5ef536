"""Per-step batches as a pure function of (seed, step): exact resumption needs only the step.

Each stream (labelled, unlabelled) is an endless sequence of reshuffled passes over its
images; step `s` takes positions [s * B, (s + 1) * B) of that sequence, so a labelled batch
larger than the labelled subset simply spans several passes. Every process gathers only its
own rows of each global batch, so the global batch is the same whatever the process count.
"""

from __future__ import annotations

import collections
import functools
import queue
import threading
from typing import TYPE_CHECKING, Iterator

import numpy as np
from jax.sharding import Mesh

from semi_ssl import parallel

if TYPE_CHECKING:
  from semi_ssl.data.datasets import DatasetSplits

LABELLED_STREAM, UNLABELLED_STREAM = 0, 1


@functools.lru_cache(maxsize=8)
def _permutation(seed: int, stream: int, epoch: int, size: int) -> np.ndarray:
  return np.random.default_rng([seed, stream, epoch]).permutation(size)


def batch_indices(step: int, *, batch_size: int, size: int, seed: int, stream: int) -> np.ndarray:
  """Indices int64 [batch_size] into a split of `size` images for global step `step`."""
  positions = step * batch_size + np.arange(batch_size)
  epochs, offsets = np.divmod(positions, size)
  indices = np.empty(batch_size, dtype=np.int64)
  for epoch in np.unique(epochs):
    in_epoch = epochs == epoch
    indices[in_epoch] = _permutation(seed, stream, int(epoch), size)[offsets[in_epoch]]
  return indices


def host_batch(
  splits: DatasetSplits, step: int, *, seed: int, labelled_batch_size: int, batch_size: int | None
) -> dict:
  """This process's rows of the global batch of `step` (uint8 images, int32 labels; the
  unlabelled images' int32 `indices` into the unlabelled set).

    `batch_size=None` leaves out the unlabelled stream (methods that do not use it).
  """
  rows = parallel.process_slice(labelled_batch_size)
  idx = batch_indices(
    step,
    batch_size=labelled_batch_size,
    size=len(splits.labelled_labels),
    seed=seed,
    stream=LABELLED_STREAM,
  )[rows]
  batch = {
    'labelled': {
      'images': np.asarray(splits.labelled_images[idx]),
      'labels': splits.labelled_labels[idx].astype(np.int32),
    }
  }
  if batch_size is not None:
    rows = parallel.process_slice(batch_size)
    idx = batch_indices(
      step,
      batch_size=batch_size,
      size=len(splits.unlabelled_images),
      seed=seed,
      stream=UNLABELLED_STREAM,
    )[rows]
    batch['unlabelled'] = {
      'images': np.asarray(splits.unlabelled_images[idx]),
      'indices': idx.astype(np.int32),
    }
  return batch


def iterate(
  splits: DatasetSplits,
  mesh: Mesh,
  *,
  start_step: int,
  num_steps: int,
  seed: int,
  labelled_batch_size: int,
  batch_size: int | None,
  prefetch: int = 2,
  device_prefetch: int = 2,
) -> Iterator[dict]:
  """Global batches for steps start_step..num_steps-1: `prefetch` host batches gathered ahead
  in a background thread, and `device_prefetch` of them sent to the devices ahead."""
  buffer: queue.Queue = queue.Queue(maxsize=prefetch)

  def produce():
    try:
      for step in range(start_step, num_steps):
        buffer.put(
          host_batch(
            splits, step, seed=seed, labelled_batch_size=labelled_batch_size, batch_size=batch_size
          )
        )
    except Exception as error:  # Re-raised in the consumer, which would otherwise wait forever.
      buffer.put(error)

  def consume():
    for _ in range(start_step, num_steps):
      item = buffer.get()
      if isinstance(item, Exception):
        raise item
      yield parallel.global_batch(item, mesh)

  threading.Thread(target=produce, daemon=True).start()
  return prefetch_to_device(consume(), device_prefetch)


def prefetch_to_device(batches: Iterator, size: int) -> Iterator:
  """`batches` in order, `size` batches past the one handed out already made: their transfers
  to the devices (asynchronous) overlap the steps before them, as flax's
  `jax_utils.prefetch_to_device` does (flax/jax_utils.py line 132)."""
  ahead: collections.deque = collections.deque()
  for batch in batches:
    ahead.append(batch)
    if len(ahead) > size:
      yield ahead.popleft()
  yield from ahead
