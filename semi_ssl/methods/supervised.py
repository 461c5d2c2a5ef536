"""Supervised baseline: the backbone and a linear classifier trained on the labelled subset
only, with the labelled views of the semi-supervised methods. Every method must beat it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from semi_ssl.methods import base, views
from semi_ssl.ops import losses


class Classifier(nnx.Module):
  """Backbone followed by a linear layer."""

  def __init__(self, backbone: nnx.Module, num_classes: int, rngs: nnx.Rngs):
    self.backbone = backbone
    self.head = nnx.Linear(backbone.feature_dim, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.head(self.backbone(x, train=train)).astype(jnp.float32)


class Supervised(base.Method):
  """Cross-entropy on every view of every labelled image, one classifier call per view size
  (`views.by_size`; the head is linear, without BatchNorm, so it may run per size too)."""

  uses_unlabelled = False

  def create_model(self, rngs: nnx.Rngs) -> Classifier:
    return Classifier(
      base.create_backbone(self.config, self.data, rngs), self.data.num_classes, rngs
    )

  def loss(self, model, state, batch, key, step):
    del key, step
    labelled = batch['labelled']
    targets = losses.one_hot_targets(
      labelled['labels'], self.data.num_classes, self.config.supervised.label_smoothing
    )
    logits = views.by_size(lambda x: model(x, train=True), labelled['views'])
    loss = jnp.mean(jnp.stack([losses.cross_entropy(l, targets) for l in logits]))
    return loss, (state, {'train_top1': losses.accuracy(logits[0], labelled['labels'])})

  def predict(self, model, images):
    return model(images, train=False)
