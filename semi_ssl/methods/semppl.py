"""SemPPL (Bošnjak et al., ICLR 2023, "SemPPL: Predicting pseudo-labels for better contrastive
representations"): contrastive learning whose positives include queue entries of the same
(pseudo-)label.

Networks. The online network is backbone -> projector -> predictor, giving unit-norm
predictions h of every view. The target network, an EMA of the online parameters whose
momentum rises from `target_momentum` to 1 on a cosine schedule (BYOL), gives unit-norm
projections t of the global views, without gradient.

Queue. A FIFO ring buffer of the target projections of the labelled images' global views and
their labels, in the method state (so checkpointed with the train state). Each step writes its
labelled projections over the oldest entries, then reads the queue.

Pseudo-labels. An unlabelled image's pseudo-label is the majority vote of the `knn_k` queue
entries nearest (by cosine) to the mean of its global views' online predictions
(`ops/knn.py`). The queue's rows are stored split over all devices of the mesh (the data
axis, and the model axis if any), so a device holds queue / devices of them and its scores
take O(batch x queue / devices) memory.

Loss. For every online view v and every other global view g, InfoNCE with temperature
`temperature`, anchor h_i^v and the target projections t_j^g of the other images j of the
global batch as negatives, against two kinds of positive:
  augmentation  t_i^g, the same image's other view;
  semantic      each of `num_semantic_positives` queue entries drawn uniformly among those of
                image i's label (labelled images) or pseudo-label (unlabelled images).
The loss is L_augm + `semantic_weight` * L_sempos (the paper's alpha; optionally ramped up
linearly over the first `semantic_warmup_steps`, while the pseudo-labels are poor), plus the
cross-entropy
of a linear classifier on the backbone features of the labelled global views. `predict` is that
classifier. Its features are stop-gradient, so the labels reach the representation only
through the semantic positives, as in the paper (which evaluates by linear evaluation or
fine-tuning), unless `classifier_trains_backbone` lets its gradient into the backbone too.
`eval_predictions` gives the kNN pseudo-labels of eval images, to follow their test accuracy.

Left out from the paper: ReLICv2's invariance penalty (the KL terms weighted by lambda) and its
subsampling of 10 negatives per anchor; all images of the global batch are negatives here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from semi_ssl import parallel
from semi_ssl.errors import require
from semi_ssl.methods import base, views
from semi_ssl.methods.teacher import EMATeacher
from semi_ssl.models import heads
from semi_ssl.ops import knn, losses, queue
from semi_ssl.ops.normalize import l2_normalize


class SemPPLModel(nnx.Module):
  """backbone -> projector -> predictor, and a linear classifier on the backbone features."""

  def __init__(
    self,
    backbone: nnx.Module,
    *,
    num_classes: int,
    hidden_dim: int,
    embed_dim: int,
    num_layers: int,
    rngs: nnx.Rngs,
  ):
    self.backbone = backbone
    self.projector = heads.MLP(
      backbone.feature_dim, hidden_dim, embed_dim, num_layers=num_layers, batch_norm=True, rngs=rngs
    )
    self.predictor = heads.MLP(
      embed_dim, hidden_dim, embed_dim, num_layers=num_layers, batch_norm=True, rngs=rngs
    )
    self.classifier = nnx.Linear(backbone.feature_dim, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """[B, H, W, C] -> (backbone features [B, F], unit-norm predictions [B, embed_dim])."""
    features = self.backbone(x, train=train)
    return features, self.predict_features(features, train=train)

  def predict_features(self, features: jax.Array, *, train: bool) -> jax.Array:
    """Backbone features [B, F] -> unit-norm predictions [B, embed_dim] (the online output)."""
    return l2_normalize(self.predictor(self.projector(features, train=train), train=train))

  def project_features(self, features: jax.Array, *, train: bool) -> jax.Array:
    """Backbone features [B, F] -> unit-norm projections [B, embed_dim] (the target
    network's output)."""
    return l2_normalize(self.projector(features, train=train))

  def classify(self, features: jax.Array) -> jax.Array:
    """Backbone features [B, F] -> class logits [B, C] float32."""
    return self.classifier(features).astype(jnp.float32)


def contrastive_losses(
  anchors: jax.Array, targets: jax.Array, positives: jax.Array, valid: jax.Array, temperature: float
) -> tuple[jax.Array, jax.Array]:
  """InfoNCE of each anchor against its augmentation positive and its semantic positives,
  all sharing the anchor's negatives.

  Args:
    anchors: [B, D] unit-norm online predictions.
    targets: [B, D] unit-norm target projections: row i is anchor i's augmentation positive,
      the other rows its negatives.
    positives: [B, S, D] unit-norm semantic positives.
    valid: bool [B, S]; invalid semantic positives are left out.
    temperature: of the cosine similarities.

  Returns:
    Per-anchor losses (augmentation [B], semantic [B]: mean over the valid positives, 0 where
    there are none), each -log(e^p / (e^p + sum over negatives e^n)).
  """
  logits = anchors @ targets.T / temperature  # [B, B]
  diagonal = jnp.eye(logits.shape[0], dtype=bool)
  negatives = jax.nn.logsumexp(jnp.where(diagonal, -jnp.inf, logits), axis=1)  # [B]
  augmentation = jax.nn.softplus(negatives - jnp.diagonal(logits))
  semantic_logits = jnp.einsum('bd,bsd->bs', anchors, positives) / temperature
  semantic = jnp.where(valid, jax.nn.softplus(negatives[:, None] - semantic_logits), 0.0)
  return augmentation, jnp.sum(semantic, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1)


class SemPPL(base.Method):
  """See the module docstring; hyperparameters live in `config.semppl`."""

  def __init__(self, config, data, mesh):
    super().__init__(config, data, mesh)
    self.hp = hp = config.semppl
    # The queue's rows are split over all devices of the mesh, as the batch is.
    self.split = parallel.batch_sharding(mesh).spec
    num_devices, per_device = mesh.size, hp.queue_size // mesh.size
    aug = config.augment
    enqueued = aug.num_global_crops * config.labelled_batch_size
    require(
      aug.num_global_crops + aug.num_local_crops >= 2,
      'SemPPL contrasts views of one image: set config.augment.num_global_crops=2 or add '
      'local crops.',
    )
    require(
      aug.get('labelled') is None,
      'SemPPL contrasts the views of labelled and unlabelled images alike, so both need '
      'the same views: leave config.augment.labelled unset (None).',
    )
    require(
      hp.temperature > 0, f'config.semppl.temperature={hp.temperature} must be positive, e.g. 0.1.'
    )
    require(
      0.0 <= hp.target_momentum <= 1.0,
      f'config.semppl.target_momentum={hp.target_momentum} must be in [0, 1].',
    )
    require(
      hp.queue_size % num_devices == 0,
      f'config.semppl.queue_size={hp.queue_size} is not divisible by the {num_devices} '
      'devices it is split over: use a multiple of them.',
    )
    for key in ('knn_k', 'num_semantic_positives'):
      require(
        1 <= hp[key] <= per_device,
        f'config.semppl.{key}={hp[key]} must be in [1, {per_device}] (the queue entries per '
        f'device: queue_size {hp.queue_size} / {num_devices} devices).',
      )
    require(
      enqueued <= hp.queue_size,
      f'config.semppl.queue_size={hp.queue_size} is below the {enqueued} labelled '
      'projections enqueued per step (global crops x labelled_batch_size): enlarge it.',
    )
    self.target = EMATeacher(hp.target_momentum, cosine_steps=config.num_steps)

  def create_model(self, rngs):
    return SemPPLModel(
      base.create_backbone(self.config, self.data, rngs),
      num_classes=self.data.num_classes,
      hidden_dim=self.hp.mlp_hidden_dim,
      embed_dim=self.hp.embed_dim,
      num_layers=self.hp.mlp_layers,
      rngs=rngs,
    )

  def init_state(self, params):
    return {
      'target': self.target.init(params),
      'queue': queue.init(self.hp.queue_size, self.hp.embed_dim, labels=True),
    }

  def state_sharding(self, abstract_state):
    """The trainer's rule, but the queue's rows [Q] are split over all devices, as the kNN
    vote reads them: each device stores Q / devices embeddings and labels."""
    sharding = super().state_sharding(abstract_state)
    return {**sharding, 'queue': queue.split_rows(sharding['queue'], self.mesh)}

  def loss(self, model, state, batch, key, step):
    hp = self.hp
    labels = batch['labelled']['labels']
    num_labelled, num_global = labels.shape[0], self.config.augment.num_global_crops
    # Labelled and unlabelled crops of one view, and the views of one size, go through the
    # backbone together (`views.by_size`), the heads once on all: BatchNorm sees the whole batch.
    inputs = [
      jnp.concatenate([l, u])
      for l, u in zip(batch['labelled']['views'], batch['unlabelled']['views'])
    ]
    features, predictions = zip(
      *views.by_size(
        functools.partial(model.backbone, train=True),
        inputs,
        lambda f: (f, model.predict_features(f, train=True)),
      )
    )
    targets = self._target_projections(model, state['target'], inputs[:num_global])

    labelled_queue = queue.write(
      state['queue'],
      jnp.concatenate([t[:num_labelled] for t in targets]),
      jnp.tile(labels, num_global),
    )
    queries = l2_normalize(sum(p[num_labelled:] for p in predictions[:num_global]))
    positives, valid, votes = self._semantic_positives(key, labels, queries, labelled_queue)

    pairs = [
      contrastive_losses(h, targets[g], positives, valid, hp.temperature)
      for g in range(num_global)
      for v, h in enumerate(predictions)
      if v != g
    ]
    loss_augm, loss_sempos = (jnp.mean(jnp.stack(terms)) for terms in zip(*pairs))
    classifier_input = (lambda f: f) if hp.classifier_trains_backbone else jax.lax.stop_gradient
    logits = [model.classify(classifier_input(f[:num_labelled])) for f in features[:num_global]]
    loss_classifier = jnp.mean(
      jnp.stack(
        [
          losses.cross_entropy(l, losses.one_hot_targets(labels, self.data.num_classes))
          for l in logits
        ]
      )
    )
    # Linear from ~0 to `semantic_weight` over the first `semantic_warmup_steps` steps.
    semantic_weight = hp.semantic_weight * jnp.minimum(
      1.0, (step + 1) / (hp.semantic_warmup_steps + 1)
    )
    metrics = {
      'loss_augmentation': loss_augm,
      'loss_semantic': loss_sempos,
      'loss_classifier': loss_classifier,
      'train_top1': losses.accuracy(logits[0], labels),
      # Share of the k neighbours that voted for the pseudo-label.
      'pseudo_label_agreement': jnp.mean(jnp.max(votes, axis=-1)) / hp.knn_k,
      'semantic_positives_found': jnp.mean(valid),
      'queue_fill': jnp.mean(labelled_queue['labels'] != knn.EMPTY),
      'semantic_weight': semantic_weight,
    }
    loss = loss_augm + semantic_weight * loss_sempos + loss_classifier
    return loss, ({**state, 'queue': labelled_queue}, metrics)

  def _target_projections(self, model, target, global_views):
    """Unit-norm target projections (no gradient) G x [B, D] of the global views."""
    target_model = self.target.model(model, target)
    projections = views.by_size(
      functools.partial(target_model.backbone, train=True),
      global_views,
      functools.partial(target_model.project_features, train=True),
    )
    return [jax.lax.stop_gradient(t) for t in projections]

  def _semantic_positives(self, key, labels, queries, queue):
    """Queue entries of the labelled images' labels [B_l] and of the unlabelled images'
    pseudo-labels, the kNN votes of their queries [B_u, D].

    Returns (positives [B_l + B_u, S, D], valid bool [B_l + B_u, S], votes int32 [B_u, C]).
    """
    pseudo_labels, votes = self._knn(queries, queue)
    positives, valid = self._sample(key, jnp.concatenate([labels, pseudo_labels]), queue)
    return positives, valid, votes

  def _knn(self, queries, queue):
    """(labels int32 [N], votes int32 [N, C]) of queries [N, D] from the queue, split over
    the devices."""
    vote = functools.partial(
      knn.knn_pseudo_labels,
      k=self.hp.knn_k,
      num_classes=self.data.num_classes,
      axis_name=self.mesh.axis_names,
      approximate=self.hp.knn_approximate,
    )
    return self._per_device(vote, (self.split,) * 3)(queries, queue['embeddings'], queue['labels'])

  def _sample(self, key, labels, queue):
    """Semantic positives [N, S, D] of each label [N] from the queue, and their validity."""
    sample = functools.partial(
      knn.sample_same_label,
      num_samples=self.hp.num_semantic_positives,
      axis_name=self.mesh.axis_names,
    )
    return self._per_device(sample, (P(),) + (self.split,) * 3)(
      key, labels, queue['embeddings'], queue['labels']
    )

  def _per_device(self, fn, in_specs):
    """`fn` run per device over the mesh, its outputs split over all devices."""
    return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=self.split)

  def update_state(self, params, state, step):
    return {**state, 'target': self.target.update(state['target'], params, step)}

  def eval_predictions(self, model, state, images):
    """{'pseudo_label': int32 [B]}: the kNN pseudo-labels of normalised eval images
    [B, H, W, C] from the queue, so that evaluation can report their test accuracy."""
    return {'pseudo_label': self._knn(model(images, train=False)[1], state['queue'])[0]}

  def predict(self, model, images):
    return model.classify(model.backbone(images, train=False))
