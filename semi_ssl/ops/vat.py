"""Virtual adversarial training's perturbation (Miyato et al., TPAMI 2018, "Virtual
Adversarial Training"), as S4L's VAT baseline computes it (github.com/google-research/s4l
semi_supervised/vat_utils.py lines 24-63, `virtual_adversarial_perturbation_direction`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from semi_ssl.ops import losses
from semi_ssl.ops.normalize import l2_normalize


def normalize_per_example(x: jax.Array) -> jax.Array:
  """[B, ...] -> each example's slice scaled to unit l2 norm (over all its axes but the first)."""
  flat = x.reshape(x.shape[0], -1)
  return l2_normalize(flat).reshape(x.shape)


def perturbation(
  logits_fn: Callable[[jax.Array], jax.Array],
  images: jax.Array,
  clean_logits: jax.Array,
  key: jax.Array,
  *,
  xi: float,
  epsilon: float,
  num_iterations: int = 1,
) -> jax.Array:
  """The virtual adversarial perturbation [B, ...] of `images` [B, ...], each example's of l2
  norm `epsilon`.

  The power method on the Hessian H of d -> mean KL(softmax(clean) || softmax(logits_fn(x + d)))
  at d = 0, whose dominant eigenvector most raises the KL to second order: from a Gaussian d,
  `num_iterations` times d <- grad at xi d / |d| (H (xi d / |d|) by finite differences, as
  the gradient is 0 at d = 0), each example's d normalised on its own. The clean logits
  [B, K] and the result are outside the gradient.
  """
  clean_logits = jax.lax.stop_gradient(clean_logits)

  def divergence(d):
    return jnp.mean(losses.kl_divergence(clean_logits, logits_fn(images + d)))

  d = jax.random.normal(key, images.shape, images.dtype)
  for _ in range(num_iterations):
    d = jax.grad(divergence)(xi * normalize_per_example(d))
  return jax.lax.stop_gradient(epsilon * normalize_per_example(d))
