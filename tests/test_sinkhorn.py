"""Sinkhorn-Knopp against SwAV's loop in numpy, on one device, under GSPMD and under shard_map."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from semi_ssl.ops.sinkhorn import sinkhorn


def swav_sinkhorn(scores: np.ndarray, epsilon: float, num_iters: int) -> np.ndarray:
  """SwAV's `distributed_sinkhorn` on one device, float64, with all its scalar factors."""
  q = np.exp(scores.astype(np.float64) / epsilon).T  # [K, N]
  num_prototypes, num_samples = q.shape
  q /= q.sum()
  for _ in range(num_iters):
    q /= q.sum(axis=1, keepdims=True)
    q /= num_prototypes
    q /= q.sum(axis=0, keepdims=True)
    q /= num_samples
  return (q * num_samples).T


def random_scores(n: int, k: int, scale: float = 1.0, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-scale, scale, (n, k)).astype(np.float32)


def column_deviation(q: jax.Array) -> float:
  """Largest relative gap between a column sum and the equipartition N / K."""
  n, k = q.shape
  return float(np.max(np.abs(np.asarray(q).sum(axis=0) * k / n - 1.0)))


@pytest.mark.parametrize(
  'n, k, epsilon, num_iters', [(16, 4, 0.05, 1), (32, 10, 0.05, 3), (24, 7, 0.1, 5)]
)
def test_matches_swav_reference(n, k, epsilon, num_iters):
  scores = random_scores(n, k)
  q = sinkhorn(jnp.asarray(scores), epsilon=epsilon, num_iters=num_iters)
  chex.assert_shape(q, (n, k))
  chex.assert_type(q, jnp.float32)
  np.testing.assert_allclose(q, swav_sinkhorn(scores, epsilon, num_iters), rtol=2e-5, atol=1e-6)


def test_marginals_converge():
  scores = jnp.asarray(random_scores(64, 8))
  few, many = (sinkhorn(scores, num_iters=i) for i in (1, 50))
  np.testing.assert_allclose(many.sum(axis=1), 1.0, atol=1e-5)
  assert column_deviation(many) < 1e-4
  assert column_deviation(few) > 100 * column_deviation(many)


def test_gspmd_sharded_equals_single_device():
  scores = jnp.asarray(random_scores(64, 10))
  mesh = Mesh(jax.devices(), ('data',))
  sharded = jax.device_put(scores, NamedSharding(mesh, P('data')))
  q = jax.jit(sinkhorn)(sharded)
  assert q.sharding.is_equivalent_to(sharded.sharding, ndim=2)
  np.testing.assert_allclose(q, sinkhorn(scores), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('axis_name, equals_single_device', [('data', True), (None, False)])
def test_shard_map_equals_single_device_only_with_axis_name(axis_name, equals_single_device):
  scores = jnp.asarray(random_scores(64, 10))
  mesh = Mesh(jax.devices(), ('data',))
  per_device = jax.shard_map(
    lambda s: sinkhorn(s, axis_name=axis_name), mesh=mesh, in_specs=P('data'), out_specs=P('data')
  )
  q = jax.jit(per_device)(scores)
  assert np.allclose(q, sinkhorn(scores), rtol=1e-5, atol=1e-7) == equals_single_device


def test_large_scores_small_epsilon_stay_finite():
  scores = jnp.asarray(random_scores(64, 8, scale=100.0))
  q = sinkhorn(scores, epsilon=0.01, num_iters=10)
  chex.assert_tree_all_finite(q)
  np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-5)


def test_bfloat16_scores_compute_in_float32():
  scores = jnp.asarray(random_scores(32, 10), dtype=jnp.bfloat16)
  q = sinkhorn(scores)
  chex.assert_type(q, jnp.float32)
  np.testing.assert_allclose(q, sinkhorn(scores.astype(jnp.float32)), rtol=1e-6, atol=1e-7)


def test_no_gradient_flows_to_scores():
  scores = jnp.asarray(random_scores(16, 4))
  weights = jnp.asarray(random_scores(16, 4, seed=1))
  grad = jax.grad(lambda s: jnp.sum(sinkhorn(s) * weights))(scores)
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize(
  'shape, kwargs, match',
  [
    ((2, 3, 4), {}, 'must be \\[N, K\\]'),
    ((8, 4), {'epsilon': 0.0}, 'epsilon must be > 0'),
    ((8, 4), {'num_iters': 0}, 'num_iters must be >= 1'),
  ],
)
def test_bad_arguments_raise(shape, kwargs, match):
  with pytest.raises(ValueError, match=match):
    sinkhorn(jnp.zeros(shape), **kwargs)
