"""Loss terms as pure functions. Every method's classification-like term goes through
`cross_entropy`, with one-hot (optionally smoothed) or soft targets."""

from __future__ import annotations

from collections.abc import Sequence

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


def class_targets(
  labels: jax.Array, num_classes: int, num_prototypes: int, smoothing: float
) -> jax.Array:
  """Smoothed one-hot targets over the first C of K prototypes, zero on the others: [N, K]."""
  targets = one_hot_targets(labels, num_classes, smoothing)
  return jnp.pad(targets, ((0, 0), (0, num_prototypes - num_classes)))


def labelled_loss(scores: list[jax.Array], targets: jax.Array, temperature: float) -> jax.Array:
  """Mean CE of every view's scores V x [N, K] against targets [N, K]: per-example [N]."""
  return jnp.mean(jnp.stack([cross_entropy(s / temperature, targets) for s in scores]), axis=0)


def swapped_assignment_loss(
  scores: list[jax.Array], assignments: list[jax.Array], temperature: float
) -> jax.Array:
  """Mean CE of every view predicting the assignment of every *other* global view (SwAV).

  scores: V x [N, K] (global views first); assignments: G x [N, K] targets of the global
  views. Returns per-example losses [N], averaged over the (view, global view) pairs.
  """
  pairs = [
    cross_entropy(s / temperature, q)
    for g, q in enumerate(assignments)
    for v, s in enumerate(scores)
    if v != g
  ]
  return jnp.mean(jnp.stack(pairs), axis=0)


def combine(*terms: jax.Array, views: Sequence[int] | None = None) -> jax.Array:
  """One loss from per-example terms T x [N_t], each weighted by its share of the examples, or
  given `views` (T crop counts: each example of term t is the mean over views[t] crops) by its
  share of the crops, N_t views[t] / sum_s N_s views[s]."""
  views = [1] * len(terms) if views is None else views
  crops = [t.shape[0] * v for t, v in zip(terms, views, strict=True)]
  return sum(c / sum(crops) * jnp.mean(t) for c, t in zip(crops, terms))
