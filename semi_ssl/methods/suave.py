"""Suave (Fini et al., CVPR 2023, "Semi-supervised learning made simple with self-supervised
clustering"): SwAV whose first C prototypes are the class prototypes.

One cross-entropy over prototype scores / temperature: labelled views target their (smoothed)
one-hot label; unlabelled views target the Sinkhorn assignment of another global view of the
same image (swapped prediction; local crops predict every global view's assignment). The two
terms are weighted by their share of the batch. `predict` reads the class prototypes'
scores directly: there is no separate classifier.

Options of the paper's code, all off by default: a queue of past unlabelled features that
joins the Sinkhorn problem (small batches), frozen prototypes for the first steps, only the
heads trained for the first steps, an EMA (momentum) encoder that computes the assignments,
and mixup of labelled images.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from semi_ssl.methods import base
from semi_ssl.models import heads
from semi_ssl.ops import losses, sinkhorn


class SuaveModel(nnx.Module):
  """backbone -> projector -> L2-normalised embedding -> cosine scores of the prototypes."""

  def __init__(self, backbone: nnx.Module, *, hidden_dim: int, embed_dim: int, num_layers: int,
               num_prototypes: int, rngs: nnx.Rngs):
    self.backbone = backbone
    self.projector = heads.MLP(backbone.feature_dim, hidden_dim, embed_dim, num_layers=num_layers,
                               batch_norm=True, rngs=rngs)
    self.prototypes = heads.Prototypes(embed_dim, num_prototypes, rngs=rngs)

  def embed(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, C] -> unit-norm embeddings [B, embed_dim]."""
    return heads.l2_normalize(self.projector(self.backbone(x, train=train), train=train))

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, C] -> cosine scores [B, num_prototypes]."""
    return self.prototypes(self.embed(x, train=train))


def swapped_assignment_loss(scores: list[jax.Array], assignments: list[jax.Array],
                            temperature: float) -> jax.Array:
  """Mean CE of every view predicting the assignment of every *other* global view.

  scores: V x [N, K] (global views first); assignments: G x [N, K] targets of the global
  views. Returns per-example losses [N], averaged over the (view, global view) pairs.
  """
  pairs = [losses.cross_entropy(s / temperature, q)
           for g, q in enumerate(assignments) for v, s in enumerate(scores) if v != g]
  return jnp.mean(jnp.stack(pairs), axis=0)


def labelled_loss(scores: list[jax.Array], targets: jax.Array, temperature: float) -> jax.Array:
  """Mean CE of every view's scores V x [N, K] against targets [N, K]: per-example [N]."""
  return jnp.mean(jnp.stack([losses.cross_entropy(s / temperature, targets) for s in scores]),
                  axis=0)


def class_targets(labels: jax.Array, num_classes: int, num_prototypes: int,
                  smoothing: float) -> jax.Array:
  """Smoothed one-hot targets over the first C prototypes, zero on the others: [N, K]."""
  targets = losses.one_hot_targets(labels, num_classes, smoothing)
  return jnp.pad(targets, ((0, 0), (0, num_prototypes - num_classes)))


def combine(labelled: jax.Array, unlabelled: jax.Array) -> jax.Array:
  """One loss from per-example terms [B_l], [B_u], each weighted by its share of the batch."""
  return jnp.mean(jnp.concatenate([labelled, unlabelled]))


def mixup(key: jax.Array, views: list[jax.Array], targets: jax.Array, alpha: float):
  """Mixes each labelled view and the targets with one permutation and one Beta(a, a) weight."""
  lam_key, perm_key = jax.random.split(key)
  lam = jax.random.beta(lam_key, alpha, alpha)
  perm = jax.random.permutation(perm_key, targets.shape[0])
  mix = lambda x: lam * x + (1 - lam) * x[perm]
  return [mix(v) for v in views], mix(targets)


def student_scores(model, batch: dict, key: jax.Array, *, num_classes: int, num_prototypes: int,
                   label_smoothing: float, mixup_alpha: float):
  """(targets [B_l, K] of the labelled images, scores V x [B_l + B_u, K] of every view).

  Targets are the smoothed one-hot labels, mixed up with the labelled views when
  `mixup_alpha` > 0. The labelled and unlabelled crops of one view go through the network
  together, so BatchNorm sees the whole batch; labelled rows come first.
  """
  targets = class_targets(batch['labelled']['labels'], num_classes, num_prototypes,
                          label_smoothing)
  labelled_views = batch['labelled']['views']
  if mixup_alpha:
    labelled_views, targets = mixup(key, labelled_views, targets, mixup_alpha)
  scores = [model(jnp.concatenate([l, u]), train=True)
            for l, u in zip(labelled_views, batch['unlabelled']['views'])]
  return targets, scores


class Suave(base.Method):
  """See the module docstring; hyperparameters live in `config.suave`."""

  def __init__(self, config, data, mesh):
    super().__init__(config, data, mesh)
    self.hp = config.suave
    self.num_prototypes = self.hp.num_prototypes or data.num_classes
    if self.num_prototypes < data.num_classes:
      raise ValueError(f'config.suave.num_prototypes={self.num_prototypes} is below the '
                       f'{data.num_classes} classes: use 0 (= number of classes) or more.')

  def create_model(self, rngs):
    return SuaveModel(base.create_backbone(self.config, self.data, rngs),
                      hidden_dim=self.hp.projector_hidden_dim, embed_dim=self.hp.embed_dim,
                      num_layers=self.hp.projector_layers, num_prototypes=self.num_prototypes,
                      rngs=rngs)

  def init_state(self, params):
    state = {}
    if self.hp.ema_momentum:
      state['teacher'] = jax.tree.map(jnp.copy, params)
    if self.hp.queue_size:
      state['queue'] = jnp.zeros((self.hp.queue_size, self.hp.embed_dim), jnp.float32)
      state['queue_count'] = jnp.zeros((), jnp.int32)
    return state

  def loss(self, model, state, batch, key, step):
    hp = self.hp
    labels = batch['labelled']['labels']
    targets, scores = student_scores(
        model, batch, key, num_classes=self.data.num_classes,
        num_prototypes=self.num_prototypes, label_smoothing=hp.label_smoothing,
        mixup_alpha=hp.mixup_alpha)
    unlabelled_views = batch['unlabelled']['views']
    num_labelled = labels.shape[0]
    num_global = self.config.augment.num_global_crops
    teacher_embeds = self._teacher_embeddings(model, state, unlabelled_views[:num_global])
    assignments, state = self._assign(model, state, teacher_embeds)
    loss_l = labelled_loss([s[:num_labelled] for s in scores], targets, hp.temperature)
    loss_u = swapped_assignment_loss([s[num_labelled:] for s in scores], assignments,
                                     hp.temperature)
    metrics = {'loss_labelled': jnp.mean(loss_l), 'loss_unlabelled': jnp.mean(loss_u),
               'train_top1': losses.accuracy(scores[0][:num_labelled, :self.data.num_classes],
                                             labels)}
    return combine(loss_l, loss_u), (state, metrics)

  def _teacher_embeddings(self, model, state, views):
    """Embeddings (no gradient) of the global unlabelled views: G x [B_u, D]."""
    if 'teacher' in state:
      graphdef, _, rest = nnx.split(model, nnx.Param, ...)
      model = nnx.merge(graphdef, state['teacher'], rest, copy=True)
    return [jax.lax.stop_gradient(model.embed(v, train=True)) for v in views]

  def _assign(self, model, state, embeds):
    """Sinkhorn assignments G x [B_u, K] of the global views, with the queue if enabled."""
    hp = self.hp
    prototypes = lambda z: jax.lax.stop_gradient(model.prototypes(z))
    run = lambda s: sinkhorn.sinkhorn(s, epsilon=hp.sinkhorn_epsilon, num_iters=hp.sinkhorn_iters)
    if 'queue' not in state:
      return [run(prototypes(z)) for z in embeds], state
    queue, count = state['queue'], state['queue_count']
    full = count >= hp.queue_size
    assignments = []
    for z in embeds:
      with_queue = run(prototypes(jnp.concatenate([z, queue])))[:z.shape[0]]
      assignments.append(jnp.where(full, with_queue, run(prototypes(z))))
    new = jnp.concatenate(embeds)[:hp.queue_size]
    queue = jnp.concatenate([new, queue])[:hp.queue_size]  # Newest first; oldest drop out.
    return assignments, {**state, 'queue': queue, 'queue_count': count + new.shape[0]}

  def trainable(self, params, step):
    hp = self.hp
    if not (hp.heads_only_steps or hp.freeze_prototypes_steps):
      return None
    heads_only = step < hp.heads_only_steps
    frozen_prototypes = step < hp.freeze_prototypes_steps
    def mask(path, _):
      top = str(getattr(path[0], 'key', path[0]))
      return {'backbone': ~heads_only, 'prototypes': ~frozen_prototypes}.get(top, jnp.bool_(True))
    return jax.tree_util.tree_map_with_path(mask, params)

  def update_state(self, params, state, step):
    if 'teacher' in state:
      m = self.hp.ema_momentum
      state = {**state, 'teacher': jax.tree.map(lambda t, p: m * t + (1 - m) * p,
                                                 state['teacher'], params)}
    return state

  def predict(self, model, images):
    return model(images, train=False)[:, :self.data.num_classes]

  def features(self, model, images):
    return model.backbone(images, train=False)
