"""FIFO queues of past embeddings, optionally with their labels, kept in a method's state
(SemPPL's queue of labelled projections, Suave's per-crop queues of SwAV), as pure functions.

A queue is {'embeddings': [Q, D] (or [G, Q, D]: one queue per crop), 'labels': int32 [Q]
(optional; `EMPTY` in slots never written), 'position': int32 scalar}. Two write orders keep
the last Q entries: `write` over the oldest slots of a ring buffer (SemPPL), and `push`, newest
first, moving the older entries down (SwAV's and Suave's code). A shared queue's rows may be
split over the devices (`split_rows`), as the kNN vote of `ops/knn.py` reads them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from semi_ssl import parallel
from semi_ssl.ops.knn import EMPTY


def init(size: int, dim: int, *, crops: int = 0, labels: bool = False) -> dict[str, jax.Array]:
  """An empty queue of `size` entries of `dim` (`crops` > 0: one per crop), with labels or
  not, write position 0."""
  queue = {'embeddings': jnp.zeros(((crops,) if crops else ()) + (size, dim), jnp.float32)}
  if labels:
    queue['labels'] = jnp.full((size,), EMPTY, jnp.int32)
  return {**queue, 'position': jnp.zeros((), jnp.int32)}


def write(
  queue: dict[str, jax.Array], embeddings: jax.Array, labels: jax.Array | None = None
) -> dict[str, jax.Array]:
  """Writes embeddings [n, D] (and labels [n]) over the n oldest entries of a ring buffer
  [Q, D] (n <= Q), in order, wrapping around its end; `position` is the next slot."""
  size, num = queue['embeddings'].shape[0], embeddings.shape[0]
  index = (queue['position'] + jnp.arange(num)) % size
  written = {
    **queue,
    'embeddings': queue['embeddings'].at[index].set(embeddings),
    'position': (queue['position'] + num) % size,
  }
  if labels is not None:
    written['labels'] = queue['labels'].at[index].set(labels)
  return written


def push(rows: jax.Array, embeddings: jax.Array) -> jax.Array:
  """Rows [Q, D], newest first, with embeddings [n, D] in front (in order) and the oldest
  entries dropped."""
  size = rows.shape[0]
  return jnp.concatenate([embeddings[:size].astype(rows.dtype), rows])[:size]


def split_rows(sharding: dict, mesh: Mesh) -> dict:
  """The shardings `sharding` of a shared queue with its rows (embeddings and labels) split
  over all devices of `mesh`: each device stores Q / devices of them."""
  rows = parallel.batch_sharding(mesh)
  return {**sharding, **{key: rows for key in ('embeddings', 'labels') if key in sharding}}
