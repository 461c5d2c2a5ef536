"""Loss terms as pure functions. Every method's classification-like term goes through
`cross_entropy`, with one-hot (optionally smoothed) or soft targets."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from semi_ssl.ops.normalize import l2_normalize


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


def nt_xent(
  z1: jax.Array, z2: jax.Array, temperature: float, memory: jax.Array | None = None
) -> jax.Array:
  """SimCLR's NT-Xent of two views [B, D] (row i of each: image i): scalar float32.

  The 2B views are l2-normalised; anchor k's positive is the other view of its image and its
  negatives the 2B - 2 other views of the whole batch, l(k) = -log(e^{s(k, pos)/T} / sum_{m != k}
  e^{s(k, m)/T}), averaged over the 2B anchors (Chen et al. 2020, eq. 1 and Algorithm 1). The
  official code (github.com/google-research/simclr at 383d414, tf2/objective.py lines 35-89,
  `add_contrastive_loss`) gathers both views from every TPU core (lines 59-62) and sums the two
  directions, i.e. twice this mean. Here the batch is one global array: under `jit` with its
  rows split over the mesh, XLA gathers what each device needs, so the negatives are global.
  `memory` [Q, D]: Q more negatives of every anchor (SimCLRv2's MoCo-style memory of past
  keys, l2-normalised here); its all-zero rows (slots never written) are left out.
  """
  z = l2_normalize(jnp.concatenate([z1, z2]).astype(jnp.float32))
  size = z1.shape[0]
  logits = jnp.where(jnp.eye(2 * size, dtype=bool), -jnp.inf, z @ z.T / temperature)
  if memory is not None:
    filled = jnp.any(memory != 0, axis=-1)
    memory_logits = z @ l2_normalize(memory.astype(jnp.float32)).T / temperature
    logits = jnp.concatenate([logits, jnp.where(filled, memory_logits, -jnp.inf)], axis=1)
  positive = jnp.concatenate([jnp.arange(size, 2 * size), jnp.arange(size)])
  positive_logits = jnp.take_along_axis(logits, positive[:, None], axis=1)[:, 0]
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive_logits)


def distillation_loss(
  student_logits: jax.Array, teacher_logits: jax.Array, temperature: float
) -> jax.Array:
  """Per-example cross-entropy [N] from the teacher's softmax at `temperature` to the
  student's, -sum_y p_T(y; t) log p_S(y; t), of logits [N, C] (SimCLRv2, Chen et al. 2020,
  eq. 2); the teacher gets no gradient. Its gradient in the student's logits,
  (softmax(s / t) - softmax(sg(teacher) / t)) / t, is zero iff the two differ by a constant."""
  targets = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature)
  return cross_entropy(student_logits / temperature, targets)


def entropy(logits: jax.Array) -> jax.Array:
  """Per-example entropy -sum_y p(y) log p(y) of softmax(logits): [N, C] -> float32 [N]
  (entropy minimisation, Grandvalet & Bengio 2005; github.com/google-research/s4l
  semi_supervised/vat.py lines 122-125)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


def kl_divergence(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
  """Per-example KL(softmax(p_logits) || softmax(q_logits)): [N, C], [N, C] -> float32 [N]."""
  p_log = jax.nn.log_softmax(p_logits.astype(jnp.float32), axis=-1)
  q_log = jax.nn.log_softmax(q_logits.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(p_log) * (p_log - q_log), axis=-1)


def batch_hard_triplet(
  embeddings: jax.Array, identities: jax.Array, margin: float, *, soft: bool
) -> jax.Array:
  """Per-example batch-hard triplet loss [N] of embeddings [N, D] with int identities [N]
  (Hermans, Beyer, Leibe 2017, arXiv 1703.07737): for anchor a, the farthest positive
  (another row of its identity) and the nearest negative (a row of another identity) by
  Euclidean distance, loss f(d(a, p) + margin - d(a, n)) with f = softplus (`soft`) or relu.
  github.com/google-research/s4l semi_supervised/exemplar.py lines 95-163, `batch_hard` with
  sample_pos=sample_neg=False; distances sqrt(max(|x - y|^2, 1e-12)) (lines 54-57). An anchor
  without a positive or negative gets -inf or +inf there, as the official code."""
  x = embeddings.astype(jnp.float32)
  # The hardest rows chosen on |x - y|^2 from the Gram matrix (memory N^2, not the N^2 D of the
  # differences), their distances then computed from the differences: exact near 0, where
  # the square root's gradient is large and the Gram form loses the digits to cancellation.
  norms = jnp.sum(jnp.square(x), axis=-1)
  squared = jax.lax.stop_gradient(norms[:, None] + norms[None] - 2 * x @ x.T)
  same = identities[:, None] == identities[None]
  positive_mask = same & ~jnp.eye(x.shape[0], dtype=bool)

  def hardest(mask, pick, fill):
    """Distance [N] to each row's picked masked row; `fill` where it has none."""
    rows = pick(jnp.where(mask, squared, fill), axis=1)
    distance = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x - x[rows]), axis=-1), 1e-12))
    return jnp.where(jnp.any(mask, axis=1), distance, fill)

  positives = hardest(positive_mask, jnp.argmax, -jnp.inf)
  negatives = hardest(~same, jnp.argmin, jnp.inf)
  diff = positives + margin - negatives
  return jax.nn.softplus(diff) if soft else jax.nn.relu(diff)
