"""What methods do with the views of a batch before their loss: labelled targets, mixup, and
the student's passes over labelled and unlabelled crops together (not a method)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from semi_ssl.ops import losses


def mixup(key: jax.Array, views: list[jax.Array], targets: jax.Array, alpha: float):
  """Mixes each labelled view and the targets with one permutation and one Beta(a, a) weight."""
  lam_key, perm_key = jax.random.split(key)
  lam = jax.random.beta(lam_key, alpha, alpha)
  perm = jax.random.permutation(perm_key, targets.shape[0])
  mix = lambda x: lam * x + (1 - lam) * x[perm]
  return [mix(v) for v in views], mix(targets)


def student_inputs(batch: dict, key: jax.Array, *, num_classes: int, num_prototypes: int,
                   label_smoothing: float, mixup_alpha: float):
  """(targets [B_l, K] of the labelled images, inputs V x [B_l + B_u, ...] of every view).

  Targets are the smoothed one-hot labels over the first C of K prototypes, mixed up with the
  labelled views when `mixup_alpha` > 0. A view's input holds its labelled and unlabelled
  crops, labelled rows first: they go through the network together, so BatchNorm sees the
  whole batch.
  """
  targets = losses.class_targets(batch['labelled']['labels'], num_classes, num_prototypes,
                                 label_smoothing)
  labelled_views = batch['labelled']['views']
  if mixup_alpha:
    labelled_views, targets = mixup(key, labelled_views, targets, mixup_alpha)
  return targets, [jnp.concatenate([l, u])
                   for l, u in zip(labelled_views, batch['unlabelled']['views'])]


def student_scores(model, batch: dict, key: jax.Array, **kwargs):
  """(targets [B_l, K], scores V x [B_l + B_u, K]): one `model` pass per view of
  `student_inputs`."""
  targets, inputs = student_inputs(batch, key, **kwargs)
  return targets, [model(x, train=True) for x in inputs]


def student_outputs(model, batch: dict, key: jax.Array, **kwargs):
  """(targets [B_l, K], embeddings V x [B_l + B_u, D], scores V x [B_l + B_u, K]) of a
  `PrototypeModel`: `student_scores` that also keeps the embeddings the scores come from (the
  same pass)."""
  targets, inputs = student_inputs(batch, key, **kwargs)
  embeds = [model.embed(x, train=True) for x in inputs]
  return targets, embeds, [model.prototypes(z) for z in embeds]
