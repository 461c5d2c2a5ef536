"""Per-step batch indices: reshuffled passes, determinism, per-process shards."""

from unittest import mock

import jax
import numpy as np
import pytest

from helpers import tiny_config
from semi_ssl import parallel
from semi_ssl.data import datasets, pipeline


def test_each_pass_visits_every_image_once():
  size, batch = 10, 5
  seen = np.concatenate(
    [pipeline.batch_indices(s, batch_size=batch, size=size, seed=0, stream=1) for s in range(4)]
  )
  for epoch in range(2):
    assert sorted(seen[epoch * size : (epoch + 1) * size]) == list(range(size))
  assert not np.array_equal(seen[:size], seen[size:])  # Reshuffled between passes.


def test_batch_larger_than_split_spans_passes():
  idx = pipeline.batch_indices(0, batch_size=25, size=10, seed=3, stream=0)
  assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:20]) == list(range(10))
  assert set(idx[20:]) <= set(range(10)) and len(idx) == 25


def test_deterministic_given_seed_and_step_and_stream():
  kw = dict(batch_size=8, size=50)
  a = pipeline.batch_indices(7, seed=1, stream=0, **kw)
  np.testing.assert_array_equal(a, pipeline.batch_indices(7, seed=1, stream=0, **kw))
  assert not np.array_equal(a, pipeline.batch_indices(7, seed=2, stream=0, **kw))
  assert not np.array_equal(a, pipeline.batch_indices(7, seed=1, stream=1, **kw))


@pytest.mark.parametrize('num_processes', [1, 2, 4])
def test_process_slices_are_disjoint_and_cover_the_batch(num_processes):
  rows = []
  for index in range(num_processes):
    with (
      mock.patch.object(jax, 'process_count', return_value=num_processes),
      mock.patch.object(jax, 'process_index', return_value=index),
    ):
      rows.append(np.arange(16)[parallel.process_slice(16)])
  np.testing.assert_array_equal(np.concatenate(rows), np.arange(16))


def test_batches_are_sent_ahead_in_order():
  """prefetch_to_device makes `size` batches past the one it hands out, in order."""
  made = []

  def batches():
    for i in range(5):
      made.append(i)
      yield i

  prefetched = pipeline.prefetch_to_device(batches(), 2)
  assert next(prefetched) == 0 and made == [0, 1, 2]
  assert list(prefetched) == [1, 2, 3, 4]


def test_prefetched_global_batches_are_those_of_their_steps():
  """A resumed run's batches (from step 2) are on the devices, split over the data axis, and
  equal to `host_batch` of their steps."""
  config = tiny_config()
  splits = datasets.load(config)
  mesh = parallel.create_mesh()
  kw = dict(seed=3, labelled_batch_size=16, batch_size=8)
  batches = list(pipeline.iterate(splits, mesh, start_step=2, num_steps=6, **kw))
  assert len(batches) == 4
  for step, batch in zip(range(2, 6), batches):
    expected = pipeline.host_batch(splits, step, **kw)
    for got, want in zip(jax.tree.leaves(batch), jax.tree.leaves(expected)):
      assert isinstance(got, jax.Array) and got.sharding == parallel.batch_sharding(mesh)
      np.testing.assert_array_equal(np.asarray(got), want)
