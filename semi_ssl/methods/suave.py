"""Suave (Fini et al., CVPR 2023, "Semi-supervised learning made simple with self-supervised
clustering"): SwAV whose first C prototypes are the class prototypes.

One cross-entropy over prototype scores / temperature: labelled views target their (smoothed)
one-hot label; unlabelled views target the Sinkhorn assignment of another global view of the
same image (swapped prediction; local crops predict every global view's assignment). The two
terms are weighted by their share of the batch. `predict` reads the class prototypes'
scores directly: there is no separate classifier.

The assignments come from the same forward pass as the loss, detached (`suave/main_suave.py`
of github.com/pietroastolfi/suave-daino: `output_for_sk = unlab_output`): no second pass, so
BatchNorm's running statistics move only with the student's passes.

Options of the paper's code, all off by default: a queue of past unlabelled features per global
crop that joins that crop's Sinkhorn problem once full (small batches), frozen prototypes for
the first steps, only the heads trained for the first steps, an EMA (momentum) encoder whose
own pass and prototypes compute the assignments, and mixup of labelled images.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from semi_ssl.methods import base
from semi_ssl.models import heads
from semi_ssl.ops import losses, sinkhorn
from semi_ssl.ops.ema import ema
from semi_ssl.ops.normalize import l2_normalize


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
    return l2_normalize(self.projector(self.backbone(x, train=train), train=train))

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


def student_inputs(batch: dict, key: jax.Array, *, num_classes: int, num_prototypes: int,
                   label_smoothing: float, mixup_alpha: float):
  """(targets [B_l, K] of the labelled images, inputs V x [B_l + B_u, ...] of every view).

  Targets are the smoothed one-hot labels, mixed up with the labelled views when
  `mixup_alpha` > 0. A view's input holds its labelled and unlabelled crops, labelled rows
  first: they go through the network together, so BatchNorm sees the whole batch.
  """
  targets = class_targets(batch['labelled']['labels'], num_classes, num_prototypes,
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


def student_outputs(model: SuaveModel, batch: dict, key: jax.Array, **kwargs):
  """(targets [B_l, K], embeddings V x [B_l + B_u, D], scores V x [B_l + B_u, K]):
  `student_scores` that also keeps the embeddings the scores come from (the same pass)."""
  targets, inputs = student_inputs(batch, key, **kwargs)
  embeds = [model.embed(x, train=True) for x in inputs]
  return targets, embeds, [model.prototypes(z) for z in embeds]


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
      # One queue of `queue_size` per global crop (SwAV's queue[i]), newest entries first, and
      # the number of entries each holds (saturating at `queue_size`).
      state['queue'] = jnp.zeros((self.config.augment.num_global_crops, self.hp.queue_size,
                                  self.hp.embed_dim), jnp.float32)
      state['queue_count'] = jnp.zeros((), jnp.int32)
    return state

  def loss(self, model, state, batch, key, step):
    hp = self.hp
    labels = batch['labelled']['labels']
    targets, embeds, scores = student_outputs(
        model, batch, key, num_classes=self.data.num_classes,
        num_prototypes=self.num_prototypes, label_smoothing=hp.label_smoothing,
        mixup_alpha=hp.mixup_alpha)
    num_labelled = labels.shape[0]
    num_global = self.config.augment.num_global_crops
    sk_embeds, sk_scores, prototypes = self._sinkhorn_inputs(
        model, state, batch['unlabelled']['views'][:num_global],
        [z[num_labelled:] for z in embeds[:num_global]],
        [s[num_labelled:] for s in scores[:num_global]])
    assignments, state = self._assign(state, sk_embeds, sk_scores, prototypes)
    loss_l = labelled_loss([s[:num_labelled] for s in scores], targets, hp.temperature)
    loss_u = swapped_assignment_loss([s[num_labelled:] for s in scores], assignments,
                                     hp.temperature)
    metrics = {'loss_labelled': jnp.mean(loss_l), 'loss_unlabelled': jnp.mean(loss_u),
               'train_top1': losses.accuracy(scores[0][:num_labelled, :self.data.num_classes],
                                             labels)}
    return combine(loss_l, loss_u), (state, metrics)

  def _sinkhorn_inputs(self, model, state, views, embeds, scores):
    """What the assignments of the G global unlabelled views come from, without gradient:
    (embeddings G x [B_u, D], scores G x [B_u, K], the prototypes that score queue entries).

    Without a teacher: `embeds` and `scores`, the student's own pass (main_suave.py:
    `output_for_sk = unlab_output`, `embedding[lab_bs:].detach()`). With the EMA teacher: the
    teacher's pass over `views` and its prototypes (main_suave.py: `model_for_sk = ema_model`);
    its BatchNorm updates stay on the teacher's copy of the model state and are dropped.
    """
    if 'teacher' not in state:
      return ([jax.lax.stop_gradient(z) for z in embeds],
              [jax.lax.stop_gradient(s) for s in scores], model.prototypes)
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    teacher = nnx.merge(graphdef, state['teacher'], rest, copy=True)
    embeds = [jax.lax.stop_gradient(teacher.embed(v, train=True)) for v in views]
    return (embeds, [jax.lax.stop_gradient(teacher.prototypes(z)) for z in embeds],
            teacher.prototypes)

  def _assign(self, state, embeds, scores, prototypes):
    """Sinkhorn assignments G x [B_u, K] of the global views from their `scores` G x [B_u, K].

    With the queue, crop g's Sinkhorn problem also holds the entries of queue g (scored by
    `prototypes`) once it is full, and at every step crop g's `embeds` [B_u, D] enter the head
    of queue g (SwAV / main_suave.py: `queue[i]` for crop `crops_for_assign[i]`).
    """
    hp = self.hp
    run = lambda s: sinkhorn.sinkhorn(s, epsilon=hp.sinkhorn_epsilon, num_iters=hp.sinkhorn_iters)
    if 'queue' not in state:
      return [run(s) for s in scores], state
    queue, count = state['queue'], state['queue_count']
    size = queue.shape[1]
    full = count >= size
    assignments, queues = [], []
    for past, z, s in zip(queue, embeds, scores):
      queued = jax.lax.stop_gradient(prototypes(past))
      with_queue = run(jnp.concatenate([s, queued]))[:s.shape[0]]
      assignments.append(jnp.where(full, with_queue, run(s)))
      # Newest first; the oldest drop out.
      queues.append(jnp.concatenate([z[:size].astype(queue.dtype), past])[:size])
    count = jnp.minimum(count + embeds[0].shape[0], size)
    return assignments, {**state, 'queue': jnp.stack(queues), 'queue_count': count}

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
      state = {**state, 'teacher': ema(state['teacher'], params, self.hp.ema_momentum)}
    return state

  def predict(self, model, images):
    return model(images, train=False)[:, :self.data.num_classes]

  def features(self, model, images):
    return model.backbone(images, train=False)
