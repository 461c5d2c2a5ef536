"""S4L (Zhai, Oliver, Kolesnikov, Beyer, ICCV 2019, "S4L: Self-Supervised Semi-Supervised
Learning"): a classifier trained on the labelled images with a self-supervised (or
semi-supervised) loss on all images, the variant chosen by `config.s4l.variant`. The
official code is github.com/google-research/s4l (at 8f1cf05; TF1), cited below by file and line.

rotation    Cross-entropy of the labelled images plus `rotation_weight` times a 4-way rotation
            prediction loss, on its own linear head, of the labelled and of the unlabelled
            images (the mean of the two means; semi_supervised/rotation.py lines 91-124): the
            first view of each image in all four rotations (`rotations='all'`, the official
            code) or in one random rotation (`'random'`). With `classify_rotations` the
            classifier sees the rotated labelled images, each with its label (the official
            code, lines 113-119); without it, the labelled views unrotated.
exemplar    Cross-entropy of every labelled view plus `exemplar_weight` times the batch-hard
            triplet loss (`losses.batch_hard_triplet`, `triplet_margin`, soft margin with
            `triplet_soft`) on l2-normalised embeddings of a linear head (`exemplar_embed_dim`),
            each image's views (its `num_exemplar_copies` augmented copies) one identity, over
            the labelled and over the unlabelled views (the mean of the two means;
            semi_supervised/exemplar.py lines 245-299). Departure: the official `do_triplet`
            calls (lines 286-293) pass the instance and copy counts swapped, so its identities
            group rows by B rather than by copies; here they are the images.
vat_entmin  Cross-entropy of every labelled view plus `vat_weight` times VAT and `entmin_weight`
            times the entropy of the clean predictions of the first view of the unlabelled
            images (and of the labelled ones with `vat_labelled`, the official
            `apply_vat_to_labeled`; semi_supervised/vat.py lines 93-131). VAT is
            KL(clean || perturbed), the clean prediction outside the gradient, at the
            perturbation of `ops/vat.py` (`vat_xi`, `vat_epsilon`, `vat_power_iterations`);
            the perturbed passes use the batch's BatchNorm statistics and leave the running
            ones as they are (vat.py lines 83-86). Departure: the official loss is the other
            KL, KL(perturbed || clean) (vat.py lines 109-111); this is Miyato et al.'s.

`predict` is the linear classifier on the backbone features.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from semi_ssl.errors import require
from semi_ssl.methods import base, views
from semi_ssl.ops import losses, rotation, vat
from semi_ssl.ops.normalize import l2_normalize

VARIANTS = ('rotation', 'exemplar', 'vat_entmin')
ROTATIONS = ('all', 'random')


class S4LModel(nnx.Module):
  """backbone -> linear classifier, and the variant's own linear head on the same features:
  rotation logits [B, 4] or exemplar embeddings [B, embed_dim] (None: no such head)."""

  def __init__(
    self,
    backbone: nnx.Module,
    *,
    num_classes: int,
    head_dim: int | None,
    rngs: nnx.Rngs,
  ):
    self.backbone = backbone
    self.classifier = nnx.Linear(backbone.feature_dim, num_classes, rngs=rngs)
    self.head = nnx.Linear(backbone.feature_dim, head_dim, rngs=rngs) if head_dim else None

  def classify(self, features: jax.Array) -> jax.Array:
    """Backbone features [B, F] -> class logits [B, C] float32."""
    return self.classifier(features).astype(jnp.float32)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, C] -> class logits [B, num_classes] float32."""
    return self.classify(self.backbone(x, train=train))


def _num_views(augment, labelled: bool) -> int:
  if labelled and augment.get('labelled') is not None:
    return augment.labelled.num_crops
  return augment.num_global_crops + augment.num_local_crops


class S4L(base.Method):
  """See the module docstring; hyperparameters live in `config.s4l`."""

  def __init__(self, config, data, mesh):
    super().__init__(config, data, mesh)
    self.hp = hp = config.s4l
    require(
      hp.variant in VARIANTS,
      f"config.s4l.variant='{hp.variant}' is unknown; use {', '.join(VARIANTS)}.",
    )
    for key in ('rotation_weight', 'exemplar_weight', 'vat_weight', 'entmin_weight'):
      require(hp[key] >= 0, f'config.s4l.{key}={hp[key]} must be >= 0.')
    if hp.variant == 'rotation':
      require(
        hp.rotations in ROTATIONS,
        f"config.s4l.rotations='{hp.rotations}' is unknown; use {', '.join(ROTATIONS)}.",
      )
    if hp.variant == 'exemplar':
      copies = hp.num_exemplar_copies
      require(
        isinstance(copies, int) and copies >= 2,
        f'config.s4l.num_exemplar_copies={copies!r} must be an integer >= 2 (8: S4L).',
      )
      for labelled, key in (
        (False, 'num_global_crops + num_local_crops'),
        (True, 'labelled.num_crops'),
      ):
        require(
          _num_views(config.augment, labelled) == copies,
          f'config.s4l.num_exemplar_copies={copies}: each image needs that many views; set '
          f'config.augment.{key} to give {copies} (now {_num_views(config.augment, labelled)}).',
        )
      require(
        isinstance(hp.exemplar_embed_dim, int) and hp.exemplar_embed_dim > 0,
        f'config.s4l.exemplar_embed_dim={hp.exemplar_embed_dim!r} must be a positive integer.',
      )
      require(
        hp.triplet_margin >= 0, f'config.s4l.triplet_margin={hp.triplet_margin} must be >= 0.'
      )
    if hp.variant == 'vat_entmin':
      require(hp.vat_xi > 0, f'config.s4l.vat_xi={hp.vat_xi} must be > 0, e.g. 1e-6.')
      require(hp.vat_epsilon > 0, f'config.s4l.vat_epsilon={hp.vat_epsilon} must be > 0.')
      require(
        isinstance(hp.vat_power_iterations, int) and hp.vat_power_iterations >= 1,
        f'config.s4l.vat_power_iterations={hp.vat_power_iterations!r} must be an integer >= 1.',
      )

  def create_model(self, rngs):
    head_dim = {'rotation': rotation.NUM_ROTATIONS, 'exemplar': self.hp.exemplar_embed_dim}
    return S4LModel(
      base.create_backbone(self.config, self.data, rngs),
      num_classes=self.data.num_classes,
      head_dim=head_dim.get(self.hp.variant),
      rngs=rngs,
    )

  def loss(self, model, state, batch, key, step):
    del step
    variant = {'rotation': self._rotation, 'exemplar': self._exemplar, 'vat_entmin': self._vat}
    loss, metrics = variant[self.hp.variant](model, batch, key)
    return loss, (state, metrics)

  def _features(self, model, inputs):
    """Backbone features of views [B_v, h, w, C] in train mode, one call per view size."""
    return views.by_size(functools.partial(model.backbone, train=True), inputs)

  def _supervised(self, logits, labels):
    """(mean over views of the mean cross-entropy of logits V x [k B, C] whose rows are k
    copies of the B labelled images in order, labels [B]; the first view's first-copy top-1)."""
    targets = losses.one_hot_targets(labels, self.data.num_classes)
    per_view = [
      jnp.mean(losses.cross_entropy(l, jnp.tile(targets, (l.shape[0] // labels.shape[0], 1))))
      for l in logits
    ]
    return jnp.mean(jnp.stack(per_view)), losses.accuracy(logits[0][: labels.shape[0]], labels)

  def _rotate(self, key, images):
    if self.hp.rotations == 'all':
      return rotation.all_rotations(images)
    return rotation.random_rotations(key, images)

  def _rotation(self, model, batch, key):
    labelled, labels = batch['labelled']['views'], batch['labelled']['labels']
    key_l, key_u = jax.random.split(key)
    rotated_l, turns_l = self._rotate(key_l, labelled[0])
    rotated_u, turns_u = self._rotate(key_u, batch['unlabelled']['views'][0])
    classified = [] if self.hp.classify_rotations else list(labelled)
    features = self._features(model, [rotated_l, rotated_u, *classified])
    rotation_logits = [model.head(f).astype(jnp.float32) for f in features[:2]]
    rotation_loss = jnp.mean(
      jnp.stack(
        [
          jnp.mean(losses.cross_entropy(l, jax.nn.one_hot(t, rotation.NUM_ROTATIONS)))
          for l, t in zip(rotation_logits, (turns_l, turns_u))
        ]
      )
    )
    class_features = features[:1] if self.hp.classify_rotations else features[2:]
    supervised, top1 = self._supervised([model.classify(f) for f in class_features], labels)
    metrics = {
      'train_top1': top1,
      'loss_supervised': supervised,
      'loss_rotation': rotation_loss,
      'rotation_top1': losses.accuracy(rotation_logits[1], turns_u),
    }
    return supervised + self.hp.rotation_weight * rotation_loss, metrics

  def _exemplar(self, model, batch, key):
    del key
    labelled, labels = batch['labelled']['views'], batch['labelled']['labels']
    features = self._features(model, [*labelled, *batch['unlabelled']['views']])
    features_l, features_u = features[: len(labelled)], features[len(labelled) :]
    supervised, top1 = self._supervised([model.classify(f) for f in features_l], labels)

    def triplet(copies):  # V x [B, F], view v of image i in row i of copies[v].
      embeddings = l2_normalize(model.head(jnp.concatenate(copies)).astype(jnp.float32))
      identities = jnp.tile(jnp.arange(copies[0].shape[0]), len(copies))
      return jnp.mean(
        losses.batch_hard_triplet(
          embeddings, identities, self.hp.triplet_margin, soft=self.hp.triplet_soft
        )
      )

    exemplar_loss = (triplet(features_l) + triplet(features_u)) / 2
    metrics = {'train_top1': top1, 'loss_supervised': supervised, 'loss_exemplar': exemplar_loss}
    return supervised + self.hp.exemplar_weight * exemplar_loss, metrics

  def _vat(self, model, batch, key):
    hp = self.hp
    labelled, labels = batch['labelled']['views'], batch['labelled']['labels']
    unlabelled = batch['unlabelled']['views']
    features = self._features(model, [*labelled, *unlabelled])
    logits = [model.classify(f) for f in features]
    supervised, top1 = self._supervised(logits[: len(labelled)], labels)
    images, clean = unlabelled[0], logits[len(labelled)]
    if hp.vat_labelled:
      images = jnp.concatenate([labelled[0], images])
      clean = jnp.concatenate([logits[0], clean])
    graphdef, state = nnx.split(model)

    def perturbed_logits(x):  # Batch statistics; the running ones stay as they are.
      return nnx.merge(graphdef, state, copy=True)(x, train=True)

    r = vat.perturbation(
      perturbed_logits,
      images,
      clean,
      key,
      xi=hp.vat_xi,
      epsilon=hp.vat_epsilon,
      num_iterations=hp.vat_power_iterations,
    )
    vat_loss = jnp.mean(
      losses.kl_divergence(jax.lax.stop_gradient(clean), perturbed_logits(images + r))
    )
    entmin = jnp.mean(losses.entropy(clean))
    metrics = {
      'train_top1': top1,
      'loss_supervised': supervised,
      'loss_vat': vat_loss,
      'loss_entmin': entmin,
    }
    return supervised + hp.vat_weight * vat_loss + hp.entmin_weight * entmin, metrics

  def predict(self, model, images):
    return model(images, train=False)
