"""kNN pseudo-labels and same-label sampling: against brute-force numpy, split over the 8 virtual
devices and not, ties, empty slots, memory per device."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from semi_ssl.ops import knn

DATA = P('data')


def mesh():
  return Mesh(jax.devices(), ('data',))


def per_device(fn, in_specs, **kwargs):
  """`fn(..., axis_name='data', **kwargs)` over the 8 devices, outputs split on the data axis."""
  return jax.jit(
    jax.shard_map(
      functools.partial(fn, axis_name='data', **kwargs),
      mesh=mesh(),
      in_specs=in_specs,
      out_specs=DATA,
    )
  )


def random_queue(num_queries, num_keys, dim, num_classes, *, num_empty=0, seed=0):
  """Queries [N, D], keys [M, D] (random norms), key labels [M] with `num_empty` EMPTY slots."""
  rng = np.random.default_rng(seed)
  queries = rng.normal(size=(num_queries, dim)).astype(np.float32)
  keys = rng.normal(size=(num_keys, dim)).astype(np.float32) * rng.uniform(0.5, 2, (num_keys, 1))
  labels = rng.integers(0, num_classes, num_keys).astype(np.int32)
  labels[rng.choice(num_keys, num_empty, replace=False)] = knn.EMPTY
  return queries, keys.astype(np.float32), labels


def brute_force(queries, keys, key_labels, k, num_classes):
  """numpy: cosine similarities to every non-empty key, k largest, vote, ties by summed
  similarity, then by the smaller class."""
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  b = keys / np.linalg.norm(keys, axis=1, keepdims=True)
  sims = q.astype(np.float64) @ b.T.astype(np.float64)
  sims[:, key_labels == knn.EMPTY] = -np.inf
  labels, votes = [], []
  for row in sims:
    nearest = np.argsort(-row, kind='stable')[:k]
    nearest = nearest[np.isfinite(row[nearest])]
    count = np.bincount(key_labels[nearest], minlength=num_classes)
    summed = np.bincount(key_labels[nearest], weights=row[nearest], minlength=num_classes)
    tied = np.flatnonzero(count == count.max())
    labels.append(tied[np.argmax(summed[tied])])
    votes.append(count)
  return np.array(labels), np.array(votes)


@pytest.mark.parametrize('k, num_classes, num_empty', [(1, 10, 0), (5, 3, 0), (20, 7, 100)])
def test_equals_brute_force(k, num_classes, num_empty):
  queries, keys, labels = random_queue(64, 512, 16, num_classes, num_empty=num_empty)
  got_labels, got_votes = knn.knn_pseudo_labels(queries, keys, labels, k=k, num_classes=num_classes)
  chex.assert_shape((got_labels, got_votes), ((64,), (64, num_classes)))
  chex.assert_type((got_labels, got_votes), jnp.int32)
  want_labels, want_votes = brute_force(queries, keys, labels, k, num_classes)
  np.testing.assert_array_equal(got_votes, want_votes)
  np.testing.assert_array_equal(got_labels, want_labels)


@pytest.mark.parametrize('approximate', [False, True])
def test_split_over_8_devices_equals_brute_force(approximate):
  queries, keys, labels = random_queue(64, 512, 16, 10, num_empty=50, seed=1)
  vote = per_device(
    knn.knn_pseudo_labels, (DATA,) * 3, k=5, num_classes=10, approximate=approximate
  )
  got_labels, got_votes = vote(queries, keys, labels)
  assert len(jax.devices()) == 8
  assert got_labels.sharding.spec == DATA
  want_labels, want_votes = brute_force(queries, keys, labels, 5, 10)
  np.testing.assert_array_equal(got_votes, want_votes)
  np.testing.assert_array_equal(got_labels, want_labels)


def test_approximate_top_k_is_exact_on_cpu():
  queries, keys, labels = random_queue(32, 256, 8, 4, seed=2)
  exact, approximate = (
    knn.knn_pseudo_labels(queries, keys, labels, k=9, num_classes=4, approximate=a)
    for a in (False, True)
  )
  chex.assert_trees_all_equal(exact, approximate)


def test_ties_go_to_the_larger_summed_similarity():
  sims = jnp.array(
    [
      [0.9, 0.1, 0.6, 0.5],  # 2 votes each; sums 1.0 (class 0) < 1.1 (class 1).
      [0.2, 0.3, 0.4, -jnp.inf],  # Class 2 wins 2 : 1; the missing one never votes.
      [0.5, 0.5, -jnp.inf, -jnp.inf],
    ]
  )  # Equal votes and sums: the smaller class.
  labels = jnp.array([[0, 0, 1, 1], [2, 0, 2, 1], [3, 1, 0, 0]])
  winner, votes = knn.majority_vote(sims, labels, num_classes=4)
  np.testing.assert_array_equal(winner, [1, 2, 1])
  np.testing.assert_array_equal(votes, [[2, 2, 0, 0], [1, 0, 2, 0], [0, 1, 0, 1]])


def test_fewer_keys_than_k_vote_with_what_there_is():
  queries, keys, labels = random_queue(16, 64, 8, 3, num_empty=62, seed=3)
  _, votes = knn.knn_pseudo_labels(queries, keys, labels, k=5, num_classes=3)
  np.testing.assert_array_equal(votes.sum(axis=1), 2)


def test_k_above_the_keys_per_device_is_refused():
  queries, keys, labels = random_queue(16, 64, 8, 3)
  with pytest.raises(ValueError, match='k=9 is larger than the 8 keys per device'):
    per_device(knn.knn_pseudo_labels, (DATA,) * 3, k=9, num_classes=3)(queries, keys, labels)


def test_scores_per_device_are_queries_times_local_keys():
  """The compiled per-device program holds N x (M / 8) scores, never N x M."""
  queries, keys, labels = random_queue(512, 16384, 8, 10)
  all_scores_bytes = 512 * 16384 * 4
  vote = per_device(knn.knn_pseudo_labels, (DATA,) * 3, k=10, num_classes=10)
  memory = vote.lower(queries, keys, labels).compile().memory_analysis()
  assert all_scores_bytes / 8 <= memory.temp_size_in_bytes < all_scores_bytes / 2


@pytest.mark.parametrize(
  'fn, in_specs, kwargs',
  [
    (knn.knn_pseudo_labels, (DATA,) * 3, dict(k=10, num_classes=10)),
    (knn.sample_same_label, (P(), DATA, DATA, DATA), dict(num_samples=3)),
  ],
)
def test_per_device_top_k_is_not_a_full_sort(fn, in_specs, kwargs):
  """XLA's CPU top-k, not a sort of every query's scores (20x slower at 4096 x 8192)."""
  queries, keys, labels = random_queue(512, 8192, 8, 10)
  args = (
    (queries, keys, labels)
    if fn is knn.knn_pseudo_labels
    else (jax.random.PRNGKey(0), labels[:512], keys, labels)
  )
  hlo = per_device(fn, in_specs, **kwargs).lower(*args).compile().as_text()
  assert hlo.count('custom_call_target="TopK"') == 2 and ' sort(' not in hlo


def test_global_top_k_split_over_devices_equals_one_device():
  rng = np.random.default_rng(4)
  scores = rng.normal(size=(32, 256)).astype(np.float32)
  payload = {
    'index': np.arange(256, dtype=np.int32),
    'vector': rng.normal(size=(256, 3)).astype(np.float32),
  }
  want = knn.global_top_k(scores, payload, k=6)
  # Per device: every query's scores against the device's 32 keys.
  split = jax.jit(
    jax.shard_map(
      lambda s, p: knn.global_top_k(s, p, k=6, axis_name='data'),
      mesh=mesh(),
      in_specs=(P(None, 'data'), DATA),
      out_specs=DATA,
    )
  )
  got = split(scores, payload)
  chex.assert_trees_all_equal(got, want)
  np.testing.assert_array_equal(want[0], -np.sort(-scores, axis=1)[:, :6])


def sample(labels, keys, key_labels, num_samples, seed=0, split=False):
  rng = jax.random.PRNGKey(seed)
  if split:
    return per_device(knn.sample_same_label, (P(), DATA, DATA, DATA), num_samples=num_samples)(
      rng, labels, keys, key_labels
    )
  return knn.sample_same_label(rng, labels, keys, key_labels, num_samples=num_samples)


def test_samples_share_the_label_and_are_distinct():
  # Key i is the vector (label, i): samples show their label and where they came from.
  key_labels = np.random.default_rng(5).integers(0, 4, 256).astype(np.int32)
  key_labels[:30] = knn.EMPTY
  keys = np.stack([key_labels, np.arange(256)], axis=1).astype(np.float32)
  labels = np.arange(64, dtype=np.int32) % 4
  samples, valid = sample(labels, keys, key_labels, num_samples=5)
  chex.assert_shape((samples, valid), ((64, 5, 2), (64, 5)))
  assert np.all(valid)
  np.testing.assert_array_equal(samples[..., 0], np.repeat(labels[:, None], 5, axis=1))
  assert all(len(set(row)) == 5 for row in np.asarray(samples[..., 1]))


def test_too_few_keys_of_a_label_are_marked_invalid():
  key_labels = np.full(64, knn.EMPTY, np.int32)
  key_labels[[3, 40]] = 1
  keys = np.arange(64, dtype=np.float32)[:, None]
  samples, valid = sample(np.array([1, 0] * 4, np.int32), keys, key_labels, num_samples=3)
  np.testing.assert_array_equal(valid, [[True, True, False], [False] * 3] * 4)
  np.testing.assert_array_equal(np.sort(samples[0, :2, 0]), [3, 40])


def test_sampling_split_over_devices_equals_one_device_and_is_uniform():
  key_labels = (np.arange(512) % 2).astype(np.int32)
  keys = np.arange(512, dtype=np.float32)[:, None]
  labels = np.zeros(64, np.int32)
  one, split = (sample(labels, keys, key_labels, 4, split=s) for s in (False, True))
  chex.assert_trees_all_equal(one, split)
  # 64 anchors x 4 draws x 20 keys of the PRNG: every one of the 256 even keys is drawn about
  # 20 times, and the draws of different anchors differ.
  draws = np.concatenate(
    [np.asarray(sample(labels, keys, key_labels, 4, seed=s)[0]).ravel() for s in range(20)]
  ).astype(int)
  counts = np.bincount(draws, minlength=512)
  assert counts[1::2].sum() == 0 and counts[::2].min() >= 4 and counts[::2].max() <= 45
  assert len({tuple(row) for row in np.asarray(one[0][..., 0])}) > 60
