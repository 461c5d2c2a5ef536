"""k-nearest-neighbour pseudo-labels and same-label sampling against a queue of labelled
embeddings (SemPPL, Bošnjak et al. 2023), with the queue optionally split over devices.

Every function works on one device's arrays. Called plainly (`axis_name=None`) the queries
and keys are all there is. Called per device inside `jax.shard_map` with `axis_name` set, the
queries [n, D] and keys [m, D] are this device's shards: each device scores *every* query
(gathered, N x D) against its own m keys only, keeps its best k per query, and sends them
(`all_to_all`) to the device that owns the query, which keeps the best k of the devices'
candidates. The result equals the plain call on the gathered keys, and no device ever holds
more than N x m scores: memory is O(N x keys per device), never O(N x all keys).

Empty queue slots carry the label `EMPTY` and are never a neighbour or a sample.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from semi_ssl.ops.normalize import l2_normalize
from semi_ssl.ops.sinkhorn import AxisName

EMPTY = -1  # Label of an unused queue slot.


def _top_k(scores: jax.Array, k: int, *, approximate: bool, recall_target: float, total_keys: int):
  """Largest k of each row of [N, m]: (values [N, k], indices [N, k]), descending.

  `total_keys` (over all devices) sets the approximate search's recall for the whole queue.
  """
  if approximate:
    return jax.lax.approx_max_k(
      scores, k, recall_target=recall_target, reduction_input_size_override=total_keys
    )
  return jax.lax.top_k(scores, k)


def global_top_k(
  scores: jax.Array,
  payload,
  *,
  k: int,
  axis_name: AxisName | None = None,
  approximate: bool = False,
  recall_target: float = 0.95,
):
  """The k best keys of every query over the keys of all devices, with their payload.

  Args:
    scores: [N, m] scores of all N queries (with `axis_name`: gathered from every device, in
      device order) against this device's m keys; -inf marks a key that must not be chosen.
    payload: pytree of per-key arrays [m, ...] (labels, embeddings) to return with the keys.
    k: keys per query; at most m.
    axis_name: mesh axis (or axes) the keys and queries are split over, inside
      `jax.shard_map`.
    approximate: `jax.lax.approx_max_k` for the per-device top-k (optimised on TPU only; on
      CPU it returns the exact top-k); the merge of the devices' candidates is always exact.
    recall_target: of `approx_max_k`.

  Returns:
    (top scores [n, k] descending, payload pytree [n, k, ...]) for this device's queries:
    rows [i * n, (i + 1) * n) of `scores` on device i, n = N / devices (n = N without
    `axis_name`).
  """
  if k > scores.shape[1]:
    raise ValueError(
      f'global_top_k: k={k} is larger than the {scores.shape[1]} keys per '
      'device; lower k or enlarge the queue.'
    )
  num_devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
  top, index = _top_k(
    scores,
    k,
    approximate=approximate,
    recall_target=recall_target,
    total_keys=num_devices * scores.shape[1],
  )
  picked = jax.tree.map(lambda p: p[index], payload)  # [N, k, ...]
  if axis_name is None:
    return top, picked
  # Without the barrier XLA folds the all_to_all's slicing of `top` into the top-k, which the
  # CPU backend then computes as a full sort of the scores: 20x slower.
  top = jax.lax.optimization_barrier(top)

  def to_owner(x):
    """[N, k, ...] candidates of this device -> [n, devices * k, ...] of every device."""
    blocks = x.reshape(num_devices, x.shape[0] // num_devices, *x.shape[1:])
    received = jax.lax.all_to_all(blocks, axis_name, 0, 0)  # [devices, n, k, ...] by source.
    received = jnp.moveaxis(received, 0, 1)
    return received.reshape(received.shape[0], num_devices * k, *received.shape[3:])

  top, best = jax.lax.top_k(to_owner(top), k)
  take = lambda x: jnp.take_along_axis(x, best.reshape(best.shape + (1,) * (x.ndim - 2)), axis=1)
  return top, jax.tree.map(lambda p: take(to_owner(p)), picked)


def _gather(x: jax.Array, axis_name: AxisName | None) -> jax.Array:
  """Every device's rows of x, in device order (x itself without an axis)."""
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def majority_vote(
  similarities: jax.Array, labels: jax.Array, num_classes: int
) -> tuple[jax.Array, jax.Array]:
  """The most frequent label among each query's neighbours; ties go to the larger summed
  similarity (then to the smaller class).

  Args:
    similarities: [N, k] of the neighbours; -inf marks a missing neighbour (no vote).
    labels: int [N, k] of the neighbours.

  Returns:
    (labels int32 [N], votes int32 [N, C]: neighbours per class).
  """
  present = jnp.isfinite(similarities)
  hits = jax.nn.one_hot(labels, num_classes) * present[..., None]  # [N, k, C]
  votes = jnp.sum(hits, axis=1)
  summed = jnp.einsum('nk,nkc->nc', jnp.where(present, similarities, 0.0), hits)
  tied = votes == jnp.max(votes, axis=-1, keepdims=True)
  winner = jnp.argmax(jnp.where(tied, summed, -jnp.inf), axis=-1)
  return winner.astype(jnp.int32), votes.astype(jnp.int32)


@functools.partial(
  jax.jit, static_argnames=('k', 'num_classes', 'axis_name', 'approximate', 'recall_target')
)
def knn_pseudo_labels(
  queries: jax.Array,
  keys: jax.Array,
  key_labels: jax.Array,
  *,
  k: int,
  num_classes: int,
  axis_name: AxisName | None = None,
  approximate: bool = False,
  recall_target: float = 0.95,
) -> tuple[jax.Array, jax.Array]:
  """Majority vote of the k keys nearest to each query by cosine similarity.

  Args:
    queries: [n, D] (any norm; this device's shard with `axis_name`). No gradient flows back.
    keys: [m, D] (any norm; this device's shard with `axis_name`).
    key_labels: int [m] in [0, num_classes), or `EMPTY` for unused slots.
    k: neighbours per query; at most the keys per device.
    num_classes: C.
    axis_name, approximate, recall_target: see `global_top_k`.

  Returns:
    (labels int32 [n], votes int32 [n, C]) as `majority_vote`; a query with fewer than k
    non-empty keys votes with those it has.
  """
  queries = _gather(l2_normalize(jax.lax.stop_gradient(queries).astype(jnp.float32)), axis_name)
  keys = l2_normalize(jax.lax.stop_gradient(keys).astype(jnp.float32))
  similarities = jnp.where(key_labels[None, :] != EMPTY, queries @ keys.T, -jnp.inf)
  top, labels = global_top_k(
    similarities,
    key_labels,
    k=k,
    axis_name=axis_name,
    approximate=approximate,
    recall_target=recall_target,
  )
  return majority_vote(top, labels, num_classes)


@functools.partial(jax.jit, static_argnames=('num_samples', 'axis_name'))
def sample_same_label(
  rng: jax.Array,
  labels: jax.Array,
  keys: jax.Array,
  key_labels: jax.Array,
  *,
  num_samples: int,
  axis_name: AxisName | None = None,
) -> tuple[jax.Array, jax.Array]:
  """For each label, `num_samples` distinct keys of that label, uniformly at random.

  Every (query, key) pair gets a uniform score from `fold_in(rng, global key index)`, and the
  largest scores among the keys of the query's label win: a uniform draw without
  replacement, the same however the keys are split over devices.

  Args:
    rng: PRNG key, the same on every device.
    labels: int [n] (this device's shard with `axis_name`).
    keys: [m, ...] (this device's shard with `axis_name`); returned as they are.
    key_labels: int [m], `EMPTY` for unused slots.
    num_samples: S, at most the keys per device.
    axis_name: see `global_top_k`.

  Returns:
    (samples [n, S, ...] of `keys`, valid bool [n, S]): valid is False where fewer than S keys
    carry the label (those samples are arbitrary keys).
  """
  labels = _gather(labels, axis_name)
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * keys.shape[0]
  key_index = offset + jnp.arange(keys.shape[0])
  scores = jax.vmap(
    lambda i: jax.random.uniform(jax.random.fold_in(rng, i), labels.shape), out_axes=1
  )(key_index)  # [N, m]
  match = (key_labels[None, :] == labels[:, None]) & (key_labels[None, :] != EMPTY)
  top, samples = global_top_k(
    jnp.where(match, scores, -jnp.inf),
    jax.lax.stop_gradient(keys),
    k=num_samples,
    axis_name=axis_name,
  )
  return samples, jnp.isfinite(top)
