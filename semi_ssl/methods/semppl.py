"""SemPPL (Bošnjak et al., ICLR 2023, "SemPPL: Predicting pseudo-labels for better contrastive
representations"): contrastive learning whose positives include queue entries of the same
(pseudo-)label.

Networks. The online network is backbone -> projector -> predictor, giving unit-norm
predictions h of every view. The target network, an EMA of the online parameters whose
momentum rises from `target_momentum` to 1 on a cosine schedule (BYOL), gives unit-norm
projections t of the global views, without gradient.

Queue. A FIFO ring buffer of the target projections of the labelled images' global views and
their labels, in the method state (so checkpointed with the train state). Each step reads the
queue as the past steps left it (pseudo-labels and semantic positives), then writes its labelled
projections over the oldest entries: a labelled anchor never draws its own current projection.

Pseudo-labels. An unlabelled image's pseudo-label is the majority vote of the `knn_k` queue
entries nearest (by cosine) to the mean of its global views' online predictions
(`ops/knn.py`). The queue's rows are stored split over all devices of the mesh (the data
axis, and the model axis if any), so a device holds queue / devices of them and its scores
take O(batch x queue / devices) memory.

Loss. For every online view v and every other global view g, InfoNCE with temperature
`temperature`, anchor h_i^v and the target projections t_j^g of image i's negatives j: every
other image of the global batch, or (`num_negatives` > 0, ReLICv2's subsampling) that many of
them drawn uniformly once per step, shared by all of i's (view, target) pairs. Two kinds of
positive:
  augmentation  t_i^g, the same image's other view;
  semantic      each of `num_semantic_positives` queue entries drawn uniformly among those of
                image i's label (labelled images) or pseudo-label (unlabelled images): one draw
                per step shared by every pair, or (`fresh_positives`) a fresh draw per pair.
The loss is L_augm + `semantic_weight` * L_sempos (the paper's alpha; optionally ramped up
linearly over the first `semantic_warmup_steps`, while the pseudo-labels are poor)
+ `invariance_weight` * L_inv, ReLICv2's invariance penalty (0: left out): for every ordered
pair of global views (v, g), KL(p_i^{v,g} || sg[p_i^{g,v}]), p_i^{v,g} the softmax of
h_i^v . t_j^g / temperature over image i's contrast set (i and its negatives), so that the
similarity distributions of the two views agree; local views have no target projection, so
only global pairs have a swapped partner. Plus the cross-entropy
of a linear classifier on the backbone features of the labelled global views. `predict` is that
classifier. Its features are stop-gradient, so the labels reach the representation only
through the semantic positives, as in the paper (which evaluates by linear evaluation or
fine-tuning), unless `classifier_trains_backbone` lets its gradient into the backbone too.
`eval_predictions` gives the kNN pseudo-labels of eval images, to follow their test accuracy.

The invariance penalty follows ReLIC's objective (Mitrovic et al., ICLR 2021, as quoted at
paperswithcode.com/method/relic: alpha sum KL(p^do(a_lk), p^do(a_qt)) between an anchor's
similarity distributions under two augmentation pairs). The text of ReLICv2 (Tomasev et al.
2022) and of SemPPL past its abstract could not be read here: the stop-gradient on the second
argument is ReLICv2's as remembered, not read, and the penalty covers the augmentation
contrast only (no semantic-positive counterpart).
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


def sample_negatives(key: jax.Array, size: int, num_negatives: int) -> jax.Array:
  """bool [B, B], row i marking anchor i's negatives among the B images: `num_negatives`
  distinct other images drawn uniformly (0: every other image). Never i itself."""
  others = ~jnp.eye(size, dtype=bool)
  if not num_negatives:
    return others
  scores = jnp.where(others, jax.random.uniform(key, (size, size)), -1.0)
  chosen = jax.lax.top_k(scores, num_negatives)[1]  # [B, n]
  return jnp.zeros((size, size), bool).at[jnp.arange(size)[:, None], chosen].set(True)


def contrastive_losses(
  anchors: jax.Array,
  targets: jax.Array,
  positives: jax.Array,
  valid: jax.Array,
  negatives: jax.Array,
  temperature: float,
) -> tuple[jax.Array, jax.Array]:
  """InfoNCE of each anchor against its augmentation positive and its semantic positives,
  all sharing the anchor's negatives.

  Args:
    anchors: [B, D] unit-norm online predictions.
    targets: [B, D] unit-norm target projections: row i is anchor i's augmentation positive.
    positives: [B, S, D] unit-norm semantic positives.
    valid: bool [B, S]; invalid semantic positives are left out.
    negatives: bool [B, B]: row i marks the rows of `targets` that are anchor i's negatives
      (`sample_negatives`).
    temperature: of the cosine similarities.

  Returns:
    Per-anchor losses (augmentation [B], semantic [B]: mean over the valid positives, 0 where
    there are none), each -log(e^p / (e^p + sum over negatives e^n)).
  """
  logits = anchors @ targets.T / temperature  # [B, B]
  negative_mass = jax.nn.logsumexp(jnp.where(negatives, logits, -jnp.inf), axis=1)  # [B]
  augmentation = jax.nn.softplus(negative_mass - jnp.diagonal(logits))
  semantic_logits = jnp.einsum('bd,bsd->bs', anchors, positives) / temperature
  semantic = jnp.where(valid, jax.nn.softplus(negative_mass[:, None] - semantic_logits), 0.0)
  return augmentation, jnp.sum(semantic, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1)


def contrast_log_probs(
  anchors: jax.Array, targets: jax.Array, negatives: jax.Array, temperature: float
) -> jax.Array:
  """[B, B] log-softmax of anchors [B, D] . targets [B, D] / temperature over each anchor's
  contrast set (its own target i and its negatives, bool [B, B]); 0 off the set."""
  in_set = negatives | jnp.eye(negatives.shape[0], dtype=bool)
  logits = jnp.where(in_set, anchors @ targets.T / temperature, -jnp.inf)
  return jnp.where(in_set, jax.nn.log_softmax(logits, axis=1), 0.0)


def invariance_penalty(log_p: jax.Array, log_q: jax.Array, negatives: jax.Array) -> jax.Array:
  """ReLICv2's KL(p || sg[q]) per anchor [B] of two distributions over the same contrast sets,
  given as `contrast_log_probs` [B, B] with their negatives bool [B, B]; q gets no gradient."""
  in_set = negatives | jnp.eye(negatives.shape[0], dtype=bool)
  terms = jnp.exp(log_p) * (log_p - jax.lax.stop_gradient(log_q))
  return jnp.sum(jnp.where(in_set, terms, 0.0), axis=1)


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
    batch = config.labelled_batch_size + config.batch_size
    require(
      0 <= hp.num_negatives < batch,
      f'config.semppl.num_negatives={hp.num_negatives} must be in [0, {batch - 1}] (the other '
      'images of the labelled + unlabelled batch; 0: all of them).',
    )
    require(
      hp.invariance_weight >= 0,
      f'config.semppl.invariance_weight={hp.invariance_weight} must be >= 0 (0: no penalty).',
    )
    require(
      not hp.invariance_weight or aug.num_global_crops >= 2,
      'config.semppl.invariance_weight compares the similarity distributions of two global '
      'views: set config.augment.num_global_crops >= 2, or invariance_weight=0.',
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

    pairs = [(v, g) for g in range(num_global) for v in range(len(predictions)) if v != g]
    negatives_key, positives_key = jax.random.split(key)
    negatives = sample_negatives(negatives_key, targets[0].shape[0], hp.num_negatives)
    # The queue as the past steps left it: this step's labelled projections enter it after.
    queries = l2_normalize(sum(p[num_labelled:] for p in predictions[:num_global]))
    positives, valid, votes = self._semantic_positives(
      positives_key, labels, queries, state['queue'], len(pairs) if hp.fresh_positives else 1
    )
    terms = [
      contrastive_losses(
        predictions[v],
        targets[g],
        positives[d % len(positives)],
        valid[d % len(valid)],
        negatives,
        hp.temperature,
      )
      for d, (v, g) in enumerate(pairs)
    ]
    loss_augm, loss_sempos = (jnp.mean(jnp.stack(t)) for t in zip(*terms))
    labelled_queue = queue.write(
      state['queue'],
      jnp.concatenate([t[:num_labelled] for t in targets]),
      jnp.tile(labels, num_global),
    )
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
    if hp.invariance_weight:
      log_probs = lambda v, g: contrast_log_probs(
        predictions[v], targets[g], negatives, hp.temperature
      )
      metrics['loss_invariance'] = jnp.mean(
        jnp.stack(
          [
            invariance_penalty(log_probs(v, g), log_probs(g, v), negatives)
            for v, g in pairs
            if v < num_global
          ]
        )
      )
      loss += hp.invariance_weight * metrics['loss_invariance']
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

  def _semantic_positives(self, key, labels, queries, queue, num_draws=1):
    """`num_draws` independent draws of queue entries of the labelled images' labels [B_l] and
    of the unlabelled images' pseudo-labels, the kNN votes of their queries [B_u, D].

    Returns (positives [draws, B_l + B_u, S, D], valid bool [draws, B_l + B_u, S],
    votes int32 [B_u, C]).
    """
    pseudo_labels, votes = self._knn(queries, queue)
    # One sampling pass over the labels repeated per draw: each row gets its own scores.
    anchor_labels = jnp.tile(jnp.concatenate([labels, pseudo_labels]), num_draws)
    positives, valid = self._sample(key, anchor_labels, queue)
    per_draw = lambda x: x.reshape(num_draws, -1, *x.shape[1:])
    return per_draw(positives), per_draw(valid), votes

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
