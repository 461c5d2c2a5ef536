"""Loss terms as pure functions. Every method's classification-like term goes through
`cross_entropy`, with one-hot (optionally smoothed) or soft targets."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def one_hot_targets(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
  """int [N] -> float32 [N, C]: (1 - smoothing) on the label, smoothing spread over all classes."""
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + smoothing / num_classes


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example cross-entropy H(targets, softmax(logits)): [N, C], [N, C] -> float32 [N]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(targets * log_probs, axis=-1)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of rows whose arg-max is the label: [N, C], [N] -> float32 scalar."""
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
