"""Sinkhorn-Knopp equipartitioned assignments: SwAV's soft ones of a batch (Caron et al. 2020),
SeLa's hard labels of the whole data set (`self_labels`, Asano et al. 2020) and its schedule.

The iterations run in the log domain: `exp(scores / epsilon)` overflows float32
once `max|scores| / epsilon` passes ~88 (e.g. scores in [-100, 100] with
epsilon 0.01), and subtracting the max first instead underflows whole rows to
zero, so SwAV's exp-domain loop returns NaN where this one does not. It is the
same math: the outputs agree to float32 rounding wherever SwAV's loop is
finite. On CPU it takes 1-3x the time of SwAV's loop at small sizes (under a
millisecond at N=4096, K=10) and less at N=4096, K=3000
(`python -m benchmarks.bench_sinkhorn`), so there is no exp-domain path.

SwAV's scalar factors (the initial division by the total, the 1/K after the
per-prototype step, the 1/N after the per-sample step and the final *N) are
left out: each is removed by the normalisation that follows it, so the
iterations reduce to alternating the two normalisations, ending per sample.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from semi_ssl.errors import require

AxisName = str | tuple[str, ...]


def _logsumexp_over_samples(log_q: jax.Array, axis_name: AxisName | None) -> jax.Array:
  """`logsumexp` of `log_q` [n, K] over all samples, on every device: [1, K]."""
  if axis_name is None:
    return jax.nn.logsumexp(log_q, axis=0, keepdims=True)
  shift = jax.lax.pmax(jnp.max(log_q, axis=0, keepdims=True), axis_name)
  total = jax.lax.psum(jnp.sum(jnp.exp(log_q - shift), axis=0, keepdims=True), axis_name)
  return shift + jnp.log(total)


@functools.partial(jax.jit, static_argnames=('epsilon', 'num_iters', 'axis_name'))
def sinkhorn(
  scores: jax.Array,
  *,
  epsilon: float = 0.05,
  num_iters: int = 3,
  axis_name: AxisName | None = None,
) -> jax.Array:
  """Soft assignments of samples to prototypes, equipartitioned over the batch.

  Args:
    scores: [N, K] sample-to-prototype scores (e.g. cosine similarities), any
      float dtype; cast to float32. No gradient flows back to them.
    epsilon: entropic regularisation; smaller gives sharper assignments.
    num_iters: Sinkhorn-Knopp iterations (each normalises per prototype, then
      per sample).
    axis_name: mesh axis that the N axis is split over when called per device
      (inside `jax.shard_map`); the sums over samples are then reduced over it,
      so the result equals the one on the gathered batch. Leave it None under
      `jax.jit`, where GSPMD already makes sums over a sharded N global.

  Returns:
    [N, K] float32 assignments Q: each row sums to 1 and, as `num_iters` grows,
    each column sums to N / K, N the global batch size.
  """
  if scores.ndim != 2:
    raise ValueError(
      f'sinkhorn: scores must be [N, K], got shape {scores.shape}; flatten the batch axes first.'
    )
  if epsilon <= 0:
    raise ValueError(f'sinkhorn: epsilon must be > 0, got {epsilon}; SwAV uses 0.05.')
  if num_iters < 1:
    raise ValueError(f'sinkhorn: num_iters must be >= 1, got {num_iters}; SwAV uses 3.')

  def normalise(_, log_q: jax.Array) -> jax.Array:
    log_q = log_q - _logsumexp_over_samples(log_q, axis_name)  # per prototype
    return log_q - jax.nn.logsumexp(log_q, axis=1, keepdims=True)  # per sample

  log_q = jax.lax.stop_gradient(scores).astype(jnp.float32) / epsilon
  return jnp.exp(jax.lax.fori_loop(0, num_iters, normalise, log_q))


# SeLa: equipartitioned hard labels of the whole data set (Asano et al. 2020) ------------------


class SelfLabelling(NamedTuple):
  """`self_labels`'s result: labels int32 [N]; log_scale float32 [K], log(K r), so that the free
  rows' plan is softmax_k(lam log P + log_scale) / M; num_iters int32 [] and error float32 [] (the
  last convergence check's sum over samples of |c / c_new - 1|) for logging."""

  labels: jax.Array
  log_scale: jax.Array
  num_iters: jax.Array
  error: jax.Array


def _sum_over_samples(values: jax.Array, axis_name: AxisName | None) -> jax.Array:
  """Sum of `values` [n, ...] over all samples, on every device: [...]."""
  total = jnp.sum(values, axis=0)
  return total if axis_name is None else jax.lax.psum(total, axis_name)


def _self_label_marginals(
  fixed: jax.Array | None,
  fixed_counts: jax.Array | None,
  num_rows: int,
  num_clusters: int,
  axis_name: AxisName | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Which rows the transport moves and where to: (free [n] bool, log M [], log(K t) [K]), with M
  the global count of free rows and t [K] the clusters' shares of their mass (sum 1)."""
  free = jnp.ones((num_rows,), bool) if fixed is None else fixed < 0
  num_free = _sum_over_samples(free.astype(jnp.float32), axis_name)
  if fixed is None and fixed_counts is None:
    return free, jnp.log(num_free), jnp.zeros((num_clusters,), jnp.float32)
  num_fixed = jnp.zeros((num_clusters,), jnp.float32)
  if fixed is not None:
    num_fixed = _sum_over_samples(jax.nn.one_hot(fixed, num_clusters, dtype=jnp.float32), axis_name)
  if fixed_counts is not None:
    num_fixed = num_fixed + fixed_counts.astype(jnp.float32)
  room = jnp.maximum((num_free + jnp.sum(num_fixed)) / num_clusters - num_fixed, 0.0)
  return free, jnp.log(num_free), jnp.log(num_clusters * room / jnp.sum(room))


@functools.partial(jax.jit, static_argnames=('lam', 'tol', 'max_iters', 'axis_name'))
def self_labels(
  probs: jax.Array,
  *,
  lam: float = 25.0,
  tol: float = 0.1,
  max_iters: int = 10_000,
  fixed: jax.Array | None = None,
  fixed_counts: jax.Array | None = None,
  axis_name: AxisName | None = None,
) -> SelfLabelling:
  """SeLa's fast Sinkhorn-Knopp: hard labels that split the data set equally over the clusters.

  The paper's `optimize_L_sk` (yukimasano/self-label, sinkhornknopp.py:112-138; multi-GPU form
  :141-191): Q = P ** lam, scaling vectors r [K] and c [N] from r = 1/K / (Q c), c = 1/N / (r Q),
  repeated while err = sum_n |c_n / c_new_n - 1| > tol, err checked every 10th iteration (the
  1st, 11th, ...; :123-129), labels argmax_k Q[n, k] r_k (:136). The paper runs it in float64
  (main.py:48,58): P ** 25 of softmax rows underflows float32 (0.01 ** 25 = 1e-50). Here it runs
  in float32 in the log domain, each row of lam * log P shifted to max 0 (absorbed into c), with
  log(K r) and log(N c), both O(1), as the variables: the ratio c / c_new is then resolved to
  float32 rounding. Probabilities below float32's smallest normal are raised to it (log finite).

  Semi-supervised form (ours; the paper has none): rows with `fixed[n] >= 0` are labelled; their
  rows of the plan are one-hot at their class and they are left out of the iterations. The M
  free rows are spread so that every cluster ends with N / K images counting the fixed ones:
  cluster k's share of the free mass is max(N / K - F_k, 0), F_k its fixed rows, clipped at 0
  where F_k > N / K and renormalised to sum M (the others then take a little more than N / K).

  Args:
    probs: [N, K] probabilities (softmax rows of one clustering head), any float dtype; no
      gradient flows back to them.
    lam: the power lambda (paper: 25, main.py:188; 10 on CIFAR, cifar.py:121).
    tol: stop once err <= tol (paper: 0.1, sinkhornknopp.py:123; 0.01 on CIFAR, cifar.py:48). err
      is a sum over the N samples, so the same tol is stricter on a larger data set.
    max_iters: iterations at most (the paper has no bound). Confident heads need thousands: P **
      lam of peaked rows whose argmaxes fill the clusters unequally couples the clusters only
      through the rows' tiny other probabilities, so the iterations contract slowly (digits,
      lam 10, tol 0.01, N 1243, K 10: 1,200-3,800 iterations from the middle of training on,
      the paper's float64 loop the same counts).
    fixed: optional int32 [N] class in [0, K) of each labelled row, -1 for the free ones.
    fixed_counts: optional [K] further fixed rows per cluster that are not rows of `probs` (e.g.
      labelled images that a pass over the unlabelled set does not see), counted as `fixed`'s.
    axis_name: mesh axis that N is split over when called per device (inside `jax.shard_map`);
      the sums over samples are then reduced over it. Leave None under `jax.jit`, where GSPMD
      already makes sums over a sharded N global.

  Returns:
    SelfLabelling: labels int32 [N] (`fixed` where >= 0), log_scale [K], num_iters, error.
  """
  require(probs.ndim == 2, f'self_labels: probs must be [N, K], got shape {probs.shape}.')
  require(lam > 0, f'self_labels: lam must be > 0, got {lam}; the paper uses 25.')
  require(tol >= 0, f'self_labels: tol must be >= 0, got {tol}; the paper uses 0.1.')
  require(max_iters >= 1, f'self_labels: max_iters must be >= 1, got {max_iters}.')
  require(
    fixed_counts is None or fixed_counts.shape == probs.shape[1:],
    f'self_labels: fixed_counts must be [K] = {probs.shape[1:]}, got '
    f'{getattr(fixed_counts, "shape", None)}.',
  )
  require(
    fixed is None or fixed.shape == probs.shape[:1],
    f'self_labels: fixed must be [N] = {probs.shape[:1]}, got {getattr(fixed, "shape", None)}.',
  )
  num_rows, num_clusters = probs.shape
  probs = jax.lax.stop_gradient(probs).astype(jnp.float32)
  log_q = lam * jnp.log(jnp.maximum(probs, jnp.finfo(jnp.float32).tiny))
  row_max = jnp.max(log_q, axis=1)
  log_q = log_q - row_max[:, None]  # [n, K], row max 0
  free, log_num_free, log_col = _self_label_marginals(
    fixed, fixed_counts, num_rows, num_clusters, axis_name
  )
  log_k = jnp.log(jnp.float32(num_clusters))

  def scale_rows(log_r: jax.Array) -> jax.Array:  # log(M c) [n], -inf on fixed rows
    return jnp.where(free, log_k - jax.nn.logsumexp(log_q + log_r, axis=1), -jnp.inf)

  def scale_columns(log_c: jax.Array) -> jax.Array:  # log(K r) [K]
    return log_col + log_num_free - _logsumexp_over_samples(log_q + log_c[:, None], axis_name)[0]

  def iterate(carry):
    log_c, _, count, error = carry  # log_c at the start: the paper's c = 1/N (row shifts added)
    log_r = scale_columns(log_c)
    new_log_c = scale_rows(log_r)
    change = jnp.where(free, jnp.abs(jnp.expm1(log_c - new_log_c)), 0.0)
    error = jnp.where(count % 10 == 0, _sum_over_samples(change, axis_name), error)
    return new_log_c, log_r, count + 1, error

  def running(carry) -> jax.Array:
    _, _, count, error = carry
    return (error > tol) & (count < max_iters)

  # The first iteration outside the loop: it gives the carry its types (under shard_map, varying
  # over the mesh axis or not); the paper's loop also runs at least once.
  start = iterate((jnp.where(free, row_max, -jnp.inf), None, jnp.int32(0), jnp.float32(jnp.inf)))
  _, log_r, count, error = jax.lax.while_loop(running, iterate, start)
  labels = jnp.argmax(log_q + log_r, axis=1).astype(jnp.int32)
  if fixed is not None:
    labels = jnp.where(free, labels, fixed.astype(jnp.int32))
  return SelfLabelling(labels, log_r, count, error)


def relabel_steps(num_steps: int, num_label_updates: int, power: int = 2) -> tuple[int, ...]:
  """The steps before which SeLa relabels the data set, spread as the paper's code spreads them.

  main.py:134-135 places `--nopts` points at (epochs + 1.01) * N * linspace(0, 1, nopts) ** 2
  images (cifar.py:186: power 1, i.e. linear) and relabels at the first iteration whose
  iteration * batch_size reaches the next point, one point per iteration (main.py:84-90). In
  steps: point i at num_steps * (i / (num_label_updates - 1)) ** power, the relabelling at the
  first step at or after it and after the previous one. The last point is the end of training
  (main.py's 1.01 puts it just past the end), so num_label_updates - 1 relabellings run, the first
  at step 0, as in the paper's code.

  Returns:
    Strictly increasing steps in [0, num_steps).
  """
  require(num_steps >= 1, f'relabel_steps: num_steps must be >= 1, got {num_steps}.')
  require(
    num_label_updates >= 1,
    f'relabel_steps: num_label_updates must be >= 1, got {num_label_updates}; the paper uses 100.',
  )
  require(power >= 1, f'relabel_steps: power must be >= 1, got {power}; main.py uses 2.')
  last = max(num_label_updates - 1, 1)
  steps = []
  for i in range(num_label_updates):
    step = -(-num_steps * i**power // last**power)  # ceil, exact in integers
    step = max(step, steps[-1] + 1) if steps else step
    if step < num_steps:
      steps.append(step)
  return tuple(steps)
