"""SeLa's self-labelling (ops/sinkhorn.self_labels) against a float64 numpy port of the paper's
`optimize_L_sk`, on one device, under GSPMD and under shard_map; its schedule (relabel_steps)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from semi_ssl.ops.sinkhorn import relabel_steps, self_labels


def paper_self_labels(probs: np.ndarray, lam: float, tol: float, dtype=np.float64):
  """yukimasano/self-label sinkhornknopp.py:112-138 (`optimize_L_sk`): (labels [N], r [K, 1],
  iterations)."""
  ps = probs.astype(dtype).T ** dtype(lam)  # [K, N]
  num_clusters, num_samples = ps.shape
  r = np.ones((num_clusters, 1), dtype) / num_clusters
  c = np.ones((num_samples, 1), dtype) / num_samples
  err, counter = 1e6, 0
  with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
    while err > tol:
      r = dtype(1.0 / num_clusters) / (ps @ c)
      c_new = dtype(1.0 / num_samples) / (r.T @ ps).T
      if counter % 10 == 0:
        err = np.nansum(np.abs(c / c_new - 1))
      c = c_new
      counter += 1
    labels = np.argmax(ps * r, axis=0)  # the paper's nanargmax of (ps * c) * r; c > 0 per sample
  return labels, r, counter


def softmax_rows(n: int, k: int, logit_scale: float, seed: int = 0) -> np.ndarray:
  """[n, k] float32 softmax of normal logits: a network's outputs (scale ~0.1 at init)."""
  logits = np.random.default_rng(seed).normal(0.0, logit_scale, (n, k))
  return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=1))


def plan(probs: np.ndarray, lam: float, log_scale: jax.Array) -> np.ndarray:
  """[N, K] float64 transport plan of the free rows, each row summing to 1."""
  return scipy.special.softmax(lam * np.log(probs.astype(np.float64)) + log_scale, axis=1)


def with_labelled_rows(n: int, k: int, classes: np.ndarray) -> np.ndarray:
  """int32 [n]: the first len(classes) rows labelled with `classes`, the others -1."""
  return np.concatenate([classes, np.full(n - len(classes), -1)]).astype(np.int32)


@pytest.mark.parametrize(
  'n, k, logit_scale, lam, tol',
  [(1000, 10, 1.0, 25.0, 0.1), (600, 10, 1.0, 2.0, 0.1), (900, 30, 2.0, 10.0, 0.01)],
)
def test_matches_paper_float64(n, k, logit_scale, lam, tol):
  probs = softmax_rows(n, k, logit_scale)
  labels, _, iterations = paper_self_labels(probs, lam, tol)
  out = self_labels(jnp.asarray(probs), lam=lam, tol=tol)
  chex.assert_shape(out.labels, (n,))
  chex.assert_type(out.labels, jnp.int32)
  np.testing.assert_array_equal(out.labels, labels)
  assert int(out.num_iters) == iterations > 1 and float(out.error) <= tol


def test_confident_heads_converge_as_the_paper_does():
  # A trained head's softmax: peaked rows (probabilities down to 1e-37) whose argmaxes fill the
  # clusters unequally (64 to 155 of 1000), as digits' heads from mid-training on. The clusters are
  # coupled only through the tiny probabilities, so the paper's loop needs over 1000 iterations.
  logits = np.random.default_rng(0).normal(0.0, 14.0, (1000, 10)) + 0.7 * np.arange(10)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=1))
  labels, _, iterations = paper_self_labels(probs, 10.0, 0.01)
  out = self_labels(jnp.asarray(probs), lam=10.0, tol=0.01)
  np.testing.assert_array_equal(out.labels, labels)
  assert int(out.num_iters) == iterations > 1000 and float(out.error) <= 0.01


def test_plan_marginals_and_cluster_sizes():
  n, k, lam = 1000, 10, 25.0
  probs = softmax_rows(n, k, 1.0)
  deviation = {}
  for max_iters in (1, 10_000):
    out = self_labels(jnp.asarray(probs), lam=lam, tol=1e-4, max_iters=max_iters)
    deviation[max_iters] = np.max(np.abs(plan(probs, lam, out.log_scale).sum(axis=0) * k / n - 1))
  assert deviation[10_000] < 1e-3 < deviation[1]
  # Hard labels: the argmax of each row of the plan; the entropic plan (lam 25) is not one-hot, so
  # its argmax splits the clusters only nearly equally (the paper's float64 code gives the same).
  sizes = np.bincount(np.asarray(out.labels), minlength=k)
  np.testing.assert_array_equal(out.labels, np.argmax(plan(probs, lam, out.log_scale), axis=1))
  assert np.max(np.abs(sizes * k / n - 1)) < 0.05


def test_float32_underflow_of_paper_form_not_here():
  # A fresh network's softmax over 1000 clusters: every probability is ~1e-3, so P ** 25 ~ 1e-75,
  # zero in float32, and the paper's loop in float32 divides by zero.
  probs = softmax_rows(500, 1000, 0.1)
  assert np.all(probs.astype(np.float32) ** np.float32(25) == 0)
  _, r32, _ = paper_self_labels(probs, 25.0, 0.1, dtype=np.float32)
  assert not np.all(np.isfinite(r32))
  labels, _, iterations = paper_self_labels(probs, 25.0, 0.1)
  out = self_labels(jnp.asarray(probs))
  np.testing.assert_array_equal(out.labels, labels)
  assert int(out.num_iters) == iterations


def sharded_problem(n: int = 800, k: int = 10):
  probs = jnp.asarray(softmax_rows(n, k, 1.0, seed=1))
  fixed = jnp.asarray(with_labelled_rows(n, k, np.arange(80) % 4))
  return probs, fixed


@pytest.mark.parametrize('semi_supervised', [False, True])
def test_gspmd_sharded_equals_single_device(semi_supervised):
  probs, fixed = sharded_problem()
  fixed = fixed if semi_supervised else None
  mesh = Mesh(jax.devices(), ('data',))
  split = NamedSharding(mesh, P('data'))
  on_one = self_labels(probs, fixed=fixed)
  sharded = jax.jit(self_labels)(
    jax.device_put(probs, split), fixed=None if fixed is None else jax.device_put(fixed, split)
  )
  assert len(jax.devices()) == 8 and sharded.labels.sharding.is_equivalent_to(split, ndim=1)
  np.testing.assert_array_equal(sharded.labels, on_one.labels)
  assert int(sharded.num_iters) == int(on_one.num_iters)


@pytest.mark.parametrize('axis_name, equals_single_device', [('data', True), (None, False)])
def test_shard_map_equals_single_device_only_with_axis_name(axis_name, equals_single_device):
  probs, fixed = sharded_problem()
  mesh = Mesh(jax.devices(), ('data',))
  per_device = jax.shard_map(
    lambda p, f: self_labels(p, fixed=f, axis_name=axis_name).labels,
    mesh=mesh,
    in_specs=(P('data'), P('data')),
    out_specs=P('data'),
  )
  labels = jax.jit(per_device)(probs, fixed)
  same = np.array_equal(labels, self_labels(probs, fixed=fixed).labels)
  assert same == equals_single_device


def cluster_totals(out, probs, fixed, lam):
  """Per cluster: (fixed rows + free rows' plan mass [K], fixed rows + free hard labels [K])."""
  k = probs.shape[1]
  free = fixed < 0
  fixed_counts = np.bincount(fixed[~free], minlength=k)
  soft = fixed_counts + plan(probs[free], lam, out.log_scale).sum(axis=0)
  return soft, fixed_counts + np.bincount(np.asarray(out.labels)[free], minlength=k)


def test_labelled_rows_keep_classes_and_every_cluster_gets_an_equal_share():
  n, k, lam = 1000, 10, 25.0
  probs = softmax_rows(n, k, 1.0, seed=2)
  fixed = with_labelled_rows(n, k, np.repeat([0, 1, 2], [60, 30, 10]))
  out = self_labels(jnp.asarray(probs), fixed=jnp.asarray(fixed), tol=1e-4, max_iters=10_000)
  np.testing.assert_array_equal(np.asarray(out.labels)[:100], fixed[:100])
  soft, hard = cluster_totals(out, probs, fixed, lam)
  np.testing.assert_allclose(soft, n / k, rtol=1e-3)
  assert np.max(np.abs(hard * k / n - 1)) < 0.05
  # Were the fixed rows not counted, cluster 0 would end with ~60 - 10 more images than its share.
  free_only = self_labels(jnp.asarray(probs), tol=1e-4, max_iters=10_000)
  assert cluster_totals(free_only, probs, fixed, lam)[0][0] > n / k + 40


def test_overfull_cluster_gets_no_free_rows_and_the_rest_share_equally():
  n, k, lam = 1000, 10, 25.0
  probs = softmax_rows(n, k, 1.0, seed=3)
  fixed = with_labelled_rows(n, k, np.repeat([0, 1], [190, 10]))  # N / K = 100 < 190
  out = self_labels(jnp.asarray(probs), fixed=jnp.asarray(fixed), tol=1e-4, max_iters=10_000)
  soft, hard = cluster_totals(out, probs, fixed, lam)
  # Shares N / K - F_k clipped at 0 (cluster 0: 0, 1: 90, the others 100), renormalised to the 800
  # free rows.
  room = np.array([0, 90] + [100] * (k - 2))
  assert hard[0] == 190
  np.testing.assert_allclose(soft, [190, 10] + [0] * (k - 2) + room * 800 / room.sum(), rtol=1e-3)


def test_fixed_counts_are_fixed_rows_outside_probs():
  """`fixed_counts` (labelled images that are not rows of `probs`) solves the problem that has
  them as fixed rows."""
  n, k = 1000, 10
  probs = softmax_rows(n, k, 1.0, seed=4)
  classes = np.repeat([0, 1, 2], [60, 30, 10])
  with_rows = self_labels(
    jnp.concatenate([jnp.full((len(classes), k), 1.0 / k), jnp.asarray(probs)]),
    fixed=jnp.asarray(with_labelled_rows(n + len(classes), k, classes)),
  )
  counts = jnp.asarray(np.bincount(classes, minlength=k), jnp.float32)
  out = self_labels(jnp.asarray(probs), fixed_counts=counts)
  np.testing.assert_array_equal(out.labels, with_rows.labels[len(classes) :])
  np.testing.assert_allclose(out.log_scale, with_rows.log_scale, rtol=1e-5, atol=1e-5)
  assert int(out.num_iters) == int(with_rows.num_iters)


@pytest.mark.parametrize(
  'num_steps, num_label_updates, power, steps',
  [
    # main.py:135: 100 * (i / 4) ** 2 = 0, 6.25, 25, 56.25, 100 (the end: never reached).
    (100, 5, 2, (0, 7, 25, 57)),
    # cifar.py:186, linear: 0, 25, 50, 75, 100.
    (100, 5, 1, (0, 25, 50, 75)),
    # 0, 0.19, 0.75, 1.69, 3: one relabelling per step, so the 2nd and 3rd move to steps 1 and 2.
    (3, 5, 2, (0, 1, 2)),
    (10, 1, 2, (0,)),
    (10, 2, 2, (0,)),
  ],
)
def test_relabel_steps(num_steps, num_label_updates, power, steps):
  assert relabel_steps(num_steps, num_label_updates, power) == steps


@pytest.mark.parametrize(
  'shape, kwargs, match',
  [
    ((2, 3, 4), {}, 'must be \\[N, K\\]'),
    ((8, 4), {'lam': 0.0}, 'lam must be > 0'),
    ((8, 4), {'max_iters': 0}, 'max_iters must be >= 1'),
    ((8, 4), {'fixed': jnp.zeros((7,), jnp.int32)}, 'fixed must be \\[N\\]'),
    ((8, 4), {'fixed_counts': jnp.zeros((3,))}, 'fixed_counts must be \\[K\\]'),
  ],
)
def test_bad_arguments_raise(shape, kwargs, match):
  with pytest.raises(ValueError, match=match):
    self_labels(jnp.ones(shape) / shape[-1], **kwargs)
