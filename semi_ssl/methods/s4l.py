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
moam        Mix Of All Models (the paper's section 6), three stages of one method, chosen by
            `config.s4l.stage` (`config_base.s4l_moam_stages` runs them in order):
  joint     rotation and vat_entmin together, their terms summed (semi_supervised/rotation_vat.py
            lines 149-150, [O]'s weights (1 - w_c - w_v, w_c, w_v, entmin_factor) are
            rotation_weight, supervised_weight, vat_weight, entmin_weight). VAT and the entropy
            act on the images the classifier sees: with `classify_rotations` the rotated ones
            (as rotation_vat.py lines 91-100, 133-136), else the first views.
  retrain   A model (no rotation head) from scratch: the cross-entropy of the labelled views,
            plus `pseudo_label_weight` times the cross-entropy of every unlabelled view to its
            image's pseudo-label: the argmax of a frozen teacher (`frozen_teacher`, the joint
            stage's network, `teacher.stage` or `teacher.workdir`) in eval mode on the eval
            view, from the trainer's pass over the unlabelled set before step 0
            (`dataset_pass_steps`), int32 [N] in the method state, looked up by the batch's
            `indices`. ([O] labels by the argmax too: pseudo_labeling/generate_labels.py
            line 106; its step 2 config is not published.)
  finetune  The retrain stage's backbone and classifier (`init_from`), the cross-entropy of the
            labelled views only.
Each variant's loss is `supervised_weight` (1: the paper's variants) times the cross-entropy of
the classified labelled views (their one-hot targets smoothed by `label_smoothing`, ours: 0 in
the paper) plus its terms, from one pass of every view through the backbone.

`predict` is the linear classifier on the backbone features.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from semi_ssl.errors import require
from semi_ssl.methods import base, views
from semi_ssl.methods.frozen_teacher import FrozenTeacher, check_config
from semi_ssl.ops import losses, rotation, vat
from semi_ssl.ops.normalize import l2_normalize

VARIANTS = ('rotation', 'exemplar', 'vat_entmin', 'moam')
ROTATIONS = ('all', 'random')
# The loss terms beside the supervised cross-entropy: of each variant, and of each MOAM stage.
TERMS = {
  'rotation': ('rotation',),
  'exemplar': ('exemplar',),
  'vat_entmin': ('vat_entmin',),
}
MOAM_TERMS = {'joint': ('rotation', 'vat_entmin'), 'retrain': ('pseudo_label',), 'finetune': ()}


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
    if hp.variant == 'moam':
      require(
        hp.stage in MOAM_TERMS,
        f"config.s4l.stage='{hp.stage}' is unknown; use {', '.join(MOAM_TERMS)}.",
      )
    self.terms = MOAM_TERMS[hp.stage] if hp.variant == 'moam' else TERMS[hp.variant]
    for key in (
      'supervised_weight',
      'rotation_weight',
      'exemplar_weight',
      'vat_weight',
      'entmin_weight',
      'pseudo_label_weight',
    ):
      require(hp[key] >= 0, f'config.s4l.{key}={hp[key]} must be >= 0.')
    require(
      0 <= hp.label_smoothing < 1,
      f'config.s4l.label_smoothing={hp.label_smoothing} must be in [0, 1).',
    )
    if 'rotation' in self.terms:
      require(
        hp.rotations in ROTATIONS,
        f"config.s4l.rotations='{hp.rotations}' is unknown; use {', '.join(ROTATIONS)}.",
      )
    if 'exemplar' in self.terms:
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
    if 'vat_entmin' in self.terms:
      require(hp.vat_xi > 0, f'config.s4l.vat_xi={hp.vat_xi} must be > 0, e.g. 1e-6.')
      require(hp.vat_epsilon > 0, f'config.s4l.vat_epsilon={hp.vat_epsilon} must be > 0.')
      require(
        isinstance(hp.vat_power_iterations, int) and hp.vat_power_iterations >= 1,
        f'config.s4l.vat_power_iterations={hp.vat_power_iterations!r} must be an integer >= 1.',
      )
    self.uses_unlabelled = bool(self.terms)
    self.teacher = None
    if 'pseudo_label' in self.terms:
      check_config(hp.teacher, 's4l.teacher')
      teacher_config = config.copy_and_resolve_references()
      with teacher_config.unlocked():
        teacher_config.model = hp.teacher.model
      self.teacher = FrozenTeacher(
        functools.partial(self._model, teacher_config, terms=MOAM_TERMS['joint']),
        hp.teacher.workdir,
      )

  def create_model(self, rngs):
    return self._model(self.config, rngs, terms=self.terms)

  def _model(self, config, rngs, terms=()):
    """S4LModel of `config.model` with the head the loss `terms` need (none, or one)."""
    head_dim = {'rotation': rotation.NUM_ROTATIONS, 'exemplar': self.hp.exemplar_embed_dim}
    return S4LModel(
      base.create_backbone(config, self.data, rngs),
      num_classes=self.data.num_classes,
      head_dim=next((head_dim[t] for t in terms if t in head_dim), None),
      rngs=rngs,
    )

  def init_state(self, params):
    if self.teacher is None:
      return {}
    return {
      'teacher': self.teacher.init(),
      'pseudo_labels': jnp.zeros(self.data.num_unlabelled, jnp.int32),
    }

  def load_state(self, state):
    """MOAM retrain's frozen teacher read from its checkpoint."""
    return {**state, 'teacher': self.teacher.load(state['teacher'])} if self.teacher else state

  def dataset_pass_steps(self):
    return (0,) if self.teacher is not None else ()

  def dataset_pass_outputs(self, model, state, images):
    """The frozen teacher's class predictions int32 [B] (its argmax)."""
    del model
    logits = self.teacher.model(state['teacher'])(images, train=False)
    return {'pseudo_labels': jnp.argmax(logits, axis=-1).astype(jnp.int32)}

  def absorb_dataset_pass(self, model, state, outputs, step):
    del model, step
    return {**state, **outputs}

  def loss(self, model, state, batch, key, step):
    """`supervised_weight` times the cross-entropy of the classified labelled views, plus each
    of `self.terms` with its weight, from one pass of every view through the backbone."""
    del step
    hp, terms = self.hp, self.terms
    labelled, labels = batch['labelled']['views'], batch['labelled']['labels']
    rotation_key, vat_key = jax.random.split(key)
    groups, rotated = {}, None
    if 'rotation' in terms:
      key_l, key_u = jax.random.split(rotation_key)
      rotated = [
        self._rotate(k, views[0])
        for k, views in ((key_l, labelled), (key_u, batch['unlabelled']['views']))
      ]
      groups['rotated'] = [images for images, _ in rotated]
    rotated_classes = rotated is not None and hp.classify_rotations
    if not rotated_classes:
      groups['labelled'] = list(labelled)
    if set(terms) & {'exemplar', 'pseudo_label'} or ('vat_entmin' in terms and not rotated_classes):
      groups['unlabelled'] = list(batch['unlabelled']['views'])
    features = self._features(model, groups)

    def seen_by_classifier(tree):  # The labelled and unlabelled views, or their rotations.
      if rotated_classes:
        return {'labelled': tree['rotated'][:1], 'unlabelled': tree['rotated'][1:]}
      return {'labelled': tree['labelled'], 'unlabelled': tree.get('unlabelled')}

    classified, class_features = seen_by_classifier(groups), seen_by_classifier(features)
    logits_l = [model.classify(f) for f in class_features['labelled']]
    supervised, top1 = self._supervised(logits_l, labels, hp.label_smoothing)
    loss = hp.supervised_weight * supervised
    metrics = {'train_top1': top1, 'loss_supervised': supervised}
    if 'rotation' in terms:
      rotation_loss, rotation_top1 = self._rotation_loss(
        model, features['rotated'], [turns for _, turns in rotated]
      )
      loss += hp.rotation_weight * rotation_loss
      metrics.update(loss_rotation=rotation_loss, rotation_top1=rotation_top1)
    if 'exemplar' in terms:
      exemplar_loss = (
        self._triplet(model, features['labelled']) + self._triplet(model, features['unlabelled'])
      ) / 2
      loss += hp.exemplar_weight * exemplar_loss
      metrics.update(loss_exemplar=exemplar_loss)
    if 'vat_entmin' in terms:
      images = classified['unlabelled'][0]
      clean = model.classify(class_features['unlabelled'][0])
      if hp.vat_labelled:
        images = jnp.concatenate([classified['labelled'][0], images])
        clean = jnp.concatenate([logits_l[0], clean])
      vat_loss, entmin = self._vat_entmin(model, images, clean, vat_key)
      loss += hp.vat_weight * vat_loss + hp.entmin_weight * entmin
      metrics.update(loss_vat=vat_loss, loss_entmin=entmin)
    if 'pseudo_label' in terms:
      pseudo_labels = state['pseudo_labels'][batch['unlabelled']['indices']]
      pseudo_loss, pseudo_top1 = self._supervised(
        [model.classify(f) for f in features['unlabelled']], pseudo_labels
      )
      loss += hp.pseudo_label_weight * pseudo_loss
      metrics.update(loss_pseudo_label=pseudo_loss, pseudo_label_top1=pseudo_top1)
    return loss, (state, metrics)

  def _features(self, model, groups):
    """{name: backbone features of each view} of {name: views [B_v, h, w, C]} in train mode,
    views of one size in one call."""
    flat = views.by_size(
      functools.partial(model.backbone, train=True), [v for g in groups.values() for v in g]
    )
    starts = itertools.accumulate((len(g) for g in groups.values()), initial=0)
    return {name: flat[s : s + len(g)] for (name, g), s in zip(groups.items(), starts)}

  def _supervised(self, logits, labels, smoothing=0.0):
    """(mean over views of the mean cross-entropy of logits V x [k B, C] whose rows are k
    copies of the B labelled images in order, labels [B] (one-hot targets, `smoothing` spread
    over the classes); the first view's first-copy top-1)."""
    targets = losses.one_hot_targets(labels, self.data.num_classes, smoothing)
    per_view = [
      jnp.mean(losses.cross_entropy(l, jnp.tile(targets, (l.shape[0] // labels.shape[0], 1))))
      for l in logits
    ]
    return jnp.mean(jnp.stack(per_view)), losses.accuracy(logits[0][: labels.shape[0]], labels)

  def _rotate(self, key, images):
    if self.hp.rotations == 'all':
      return rotation.all_rotations(images)
    return rotation.random_rotations(key, images)

  @staticmethod
  def _rotation_loss(model, features, turns):
    """(mean of the rotation cross-entropies of the rotated labelled and unlabelled images'
    features [R, F] with their turns int32 [R]; the unlabelled rotation top-1)."""
    logits = [model.head(f).astype(jnp.float32) for f in features]
    per_set = [
      jnp.mean(losses.cross_entropy(l, jax.nn.one_hot(t, rotation.NUM_ROTATIONS)))
      for l, t in zip(logits, turns)
    ]
    return jnp.mean(jnp.stack(per_set)), losses.accuracy(logits[1], turns[1])

  def _triplet(self, model, copies):
    """Batch-hard triplet loss of the embeddings of V x [B, F] features, view v of image i in
    row i of copies[v], each image one identity."""
    embeddings = l2_normalize(model.head(jnp.concatenate(copies)).astype(jnp.float32))
    identities = jnp.tile(jnp.arange(copies[0].shape[0]), len(copies))
    return jnp.mean(
      losses.batch_hard_triplet(
        embeddings, identities, self.hp.triplet_margin, soft=self.hp.triplet_soft
      )
    )

  def _vat_entmin(self, model, images, clean, key):
    """(VAT loss, mean entropy) of images [B, H, W, C] whose clean logits are `clean` [B, C]."""
    hp = self.hp
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
    return vat_loss, jnp.mean(losses.entropy(clean))

  def predict(self, model, images):
    return model(images, train=False)
