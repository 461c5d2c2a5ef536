"""Time per jitted `sinkhorn` call on the default device, beside SwAV's exp-domain loop.

    python -m benchmarks.bench_sinkhorn

Scores are uniform in [-1, 1] (cosine similarities), epsilon 0.05, 3 iterations,
as in SwAV. Each figure is the median of 20 calls after one warm-up call.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from semi_ssl.ops.sinkhorn import sinkhorn

EPSILON = 0.05
NUM_ITERS = 3
REPEATS = 20


@functools.partial(jax.jit, static_argnames=('epsilon', 'num_iters'))
def swav_exp_domain(scores: jax.Array, *, epsilon: float, num_iters: int) -> jax.Array:
  """SwAV's loop as published (exp after subtracting the max), the baseline: [N, K] -> [N, K]."""
  q = jnp.exp((scores - jnp.max(scores)) / epsilon).T  # [K, N]
  num_prototypes, num_samples = q.shape
  q /= jnp.sum(q)
  for _ in range(num_iters):
    q /= jnp.sum(q, axis=1, keepdims=True) * num_prototypes
    q /= jnp.sum(q, axis=0, keepdims=True) * num_samples
  return (q * num_samples).T


def median_ms(fn: Callable[[jax.Array], jax.Array], scores: jax.Array) -> float:
  fn(scores).block_until_ready()
  times = []
  for _ in range(REPEATS):
    start = time.perf_counter()
    fn(scores).block_until_ready()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def main() -> None:
  device = jax.devices()[0]
  print(
    f'device: {device.platform} ({device.device_kind}), epsilon {EPSILON}, {NUM_ITERS} iterations'
  )
  print(f'{"N":>6} {"K":>6} {"sinkhorn ms":>12} {"SwAV exp ms":>12} {"ratio":>6}')
  for n in (256, 4096):
    for k in (10, 3000):
      scores = jax.device_put(
        jax.random.uniform(jax.random.key(0), (n, k), minval=-1.0, maxval=1.0), device
      )
      ours, swav = (
        median_ms(functools.partial(fn, epsilon=EPSILON, num_iters=NUM_ITERS), scores)
        for fn in (sinkhorn, swav_exp_domain)
      )
      print(f'{n:>6} {k:>6} {ours:>12.3f} {swav:>12.3f} {ours / swav:>6.2f}')


if __name__ == '__main__':
  main()
