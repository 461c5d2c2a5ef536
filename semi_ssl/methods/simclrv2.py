"""SimCLRv2 (Chen, Kornblith, Swersky, Norouzi, Hinton, NeurIPS 2020, "Big Self-Supervised
Models are Strong Semi-Supervised Learners"): three stages of one method, chosen by
`config.simclrv2.stage`, each a run of its own (`config.stages` runs them in order).

pretrain  NT-Xent (`losses.nt_xent`, temperature `temperature`) between the two global views of
          every image of the batch, unlabelled and labelled alike (their labels unused), through
          the backbone and a `projector_layers`-layer projection head with BatchNorm
          (`heads.ProjectionHead`; the paper uses 3 layers for SimCLRv2). Negatives are every
          other view of the global batch. No classifier: evaluation reports the kNN probe only.
          With `memory_size` > 0, the paper's MoCo-style memory (its section 2; the official
          code has none): the `memory_size` latest keys, the projections of both views by a
          momentum encoder (an EMA of the parameters, momentum `memory_momentum`), are more
          negatives of every anchor; a step reads the memory as the past steps left it, then
          writes its own keys over the oldest (FIFO).
finetune  The backbone and the first `finetune_layers` layers of the projection head (the
          paper's and the official `ft_proj_selector`: 1, the middle layer of the 3-layer head),
          from the pretrain checkpoint by `init_from` (paths 'backbone', 'projector': the
          fine-tune model has only those layers), then a linear classifier on top, trained with
          the cross-entropy on every labelled view; unlabelled images are not loaded.
distill   A student (architecture `config.model`, from scratch) minimises the cross-entropy to
          the softmax of a frozen teacher (`frozen_teacher.FrozenTeacher`: the fine-tune model
          of `teacher.model`, loaded from `teacher.workdir` or the `teacher.stage` of this run)
          at temperature `distill_temperature` on every unlabelled view (the paper's eq. 2; T=1
          on ImageNet), plus `label_weight` times the cross-entropy on the labelled views.
          The teacher runs in eval mode on the student's views, without gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from semi_ssl.errors import require
from semi_ssl.methods import base, views
from semi_ssl.methods.frozen_teacher import FrozenTeacher, check_config
from semi_ssl.methods.teacher import EMATeacher
from semi_ssl.models import heads
from semi_ssl.ops import losses, queue
from semi_ssl.ops.normalize import l2_normalize

STAGES = ('pretrain', 'finetune', 'distill')


class SimCLRv2Model(nnx.Module):
  """backbone -> projection head (all of it, or its first `keep_layers` layers) -> optional
  linear classifier."""

  def __init__(
    self,
    backbone: nnx.Module,
    *,
    embed_dim: int,
    projector_layers: int,
    keep_layers: int | None,
    num_classes: int | None,
    rngs: nnx.Rngs,
    zero_classifier: bool = False,
  ):
    self.backbone = backbone
    dim = backbone.feature_dim
    self.projector = (
      heads.ProjectionHead(
        dim, dim, embed_dim, num_layers=projector_layers, keep_layers=keep_layers, rngs=rngs
      )
      if keep_layers != 0
      else None
    )
    out_dim = self.projector.out_dim if self.projector is not None else dim
    init = nnx.initializers.zeros if zero_classifier else nnx.initializers.lecun_normal()
    self.classifier = (
      nnx.Linear(out_dim, num_classes, kernel_init=init, rngs=rngs) if num_classes else None
    )

  def embed(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, C] -> the projection head's output [B, D] float32 (the backbone's without)."""
    features = self.backbone(x, train=train)
    return features if self.projector is None else self.projector(features, train=train)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, C] -> class logits [B, num_classes] float32."""
    return self.classifier(self.embed(x, train=train)).astype(jnp.float32)


class SimCLRv2(base.Method):
  """See the module docstring; hyperparameters live in `config.simclrv2`."""

  def __init__(self, config, data, mesh):
    super().__init__(config, data, mesh)
    self.hp = hp = config.simclrv2
    require(
      hp.stage in STAGES, f"config.simclrv2.stage='{hp.stage}' is unknown; use {', '.join(STAGES)}."
    )
    require(
      hp.temperature > 0, f'config.simclrv2.temperature={hp.temperature} must be > 0, e.g. 0.1.'
    )
    require(
      hp.distill_temperature > 0,
      f'config.simclrv2.distill_temperature={hp.distill_temperature} must be > 0, e.g. 1.0.',
    )
    require(hp.label_weight >= 0, f'config.simclrv2.label_weight={hp.label_weight} must be >= 0.')
    require(
      isinstance(hp.projector_layers, int) and hp.projector_layers >= 1,
      f'config.simclrv2.projector_layers={hp.projector_layers} must be an integer >= 1 (3: '
      'SimCLRv2).',
    )
    require(
      0 <= hp.finetune_layers <= hp.projector_layers,
      f'config.simclrv2.finetune_layers={hp.finetune_layers} must be in [0, '
      f'{hp.projector_layers}] (the projection layers kept; 1: SimCLRv2).',
    )
    require(
      isinstance(hp.memory_size, int) and hp.memory_size >= 0,
      f'config.simclrv2.memory_size={hp.memory_size} must be an integer >= 0 (0: no memory).',
    )
    require(
      0 <= hp.memory_momentum <= 1,
      f'config.simclrv2.memory_momentum={hp.memory_momentum} must be in [0, 1], e.g. 0.999.',
    )
    aug = config.augment
    if hp.memory_size:
      keys = 2 * (config.batch_size + config.labelled_batch_size)
      require(
        hp.stage == 'pretrain',
        f"config.simclrv2.memory_size={hp.memory_size} is for stage 'pretrain' only: set it "
        f"to 0 for stage '{hp.stage}'.",
      )
      require(
        hp.memory_size >= keys,
        f'config.simclrv2.memory_size={hp.memory_size} is below the {keys} keys written per '
        'step (2 views x (batch_size + labelled_batch_size)): enlarge it.',
      )
    if hp.stage == 'pretrain':
      require(
        aug.num_global_crops == 2 and aug.num_local_crops == 0,
        'SimCLRv2 pretraining contrasts two views of each image: set '
        'config.augment.num_global_crops=2 and config.augment.num_local_crops=0.',
      )
      require(
        aug.get('labelled') is None,
        'SimCLRv2 pretraining contrasts labelled and unlabelled images alike: leave '
        'config.augment.labelled unset (None).',
      )
    self.stage = hp.stage
    self.has_classifier = hp.stage != 'pretrain'
    self.uses_unlabelled = hp.stage != 'finetune'
    self.teacher = None
    self.momentum_encoder = EMATeacher(hp.memory_momentum) if hp.memory_size else None
    if hp.stage == 'distill':
      check_config(hp.teacher, 'simclrv2.teacher')
      teacher_config = config.copy_and_resolve_references()
      with teacher_config.unlocked():
        teacher_config.model = hp.teacher.model
      self.teacher = FrozenTeacher(
        functools.partial(self._classifier_model, teacher_config), hp.teacher.workdir
      )

  def _classifier_model(self, config, rngs):
    """The fine-tune network (backbone, kept projection layers, classifier) of config.model;
    the fine-tune's classifier starts at zero (README's fine-tune commands,
    --zero_init_logits_layer=True; tf2/run.py lines 457-464)."""
    return SimCLRv2Model(
      base.create_backbone(config, self.data, rngs),
      embed_dim=self.hp.embed_dim,
      projector_layers=self.hp.projector_layers,
      keep_layers=self.hp.finetune_layers,
      num_classes=self.data.num_classes,
      rngs=rngs,
      zero_classifier=self.stage == 'finetune',
    )

  def create_model(self, rngs):
    if self.stage != 'pretrain':
      return self._classifier_model(self.config, rngs)
    return SimCLRv2Model(
      base.create_backbone(self.config, self.data, rngs),
      embed_dim=self.hp.embed_dim,
      projector_layers=self.hp.projector_layers,
      keep_layers=None,
      num_classes=None,
      rngs=rngs,
    )

  def init_state(self, params):
    if self.momentum_encoder is not None:
      return {
        'memory': queue.init(self.hp.memory_size, self.hp.embed_dim),
        'momentum_encoder': self.momentum_encoder.init(params),
      }
    return {'teacher': self.teacher.init()} if self.teacher is not None else {}

  def update_state(self, params, state, step):
    if self.momentum_encoder is None:
      return state
    encoder = self.momentum_encoder.update(state['momentum_encoder'], params, step)
    return {**state, 'momentum_encoder': encoder}

  def load_state(self, state):
    """The distill stage's frozen teacher read from its checkpoint."""
    return {'teacher': self.teacher.load(state['teacher'])} if self.teacher is not None else state

  def loss(self, model, state, batch, key, step):
    del key, step
    return {'pretrain': self._pretrain, 'finetune': self._finetune, 'distill': self._distill}[
      self.stage
    ](model, state, batch)

  def _pretrain(self, model, state, batch):
    # Each view of the labelled and unlabelled images in one call: BatchNorm sees the batch.
    inputs = [
      jnp.concatenate([l, u])
      for l, u in zip(batch['labelled']['views'], batch['unlabelled']['views'])
    ]
    z1, z2 = self._project(model, inputs)
    if self.momentum_encoder is None:
      return losses.nt_xent(z1, z2, self.hp.temperature), (state, {})
    loss = losses.nt_xent(z1, z2, self.hp.temperature, state['memory']['embeddings'])
    # The memory as the past steps left it: this step's keys enter it after.
    encoder = self.momentum_encoder.model(model, state['momentum_encoder'])
    keys = jax.lax.stop_gradient(jnp.concatenate(self._project(encoder, inputs)))
    memory = queue.write(state['memory'], l2_normalize(keys))
    fill = jnp.mean(jnp.any(memory['embeddings'] != 0, axis=-1))
    return loss, ({**state, 'memory': memory}, {'memory_fill': fill})

  @staticmethod
  def _project(model, inputs):
    """Projections [B, D] of each view [B, H, W, C] of `inputs`, views of one size together."""
    return views.by_size(
      functools.partial(model.backbone, train=True),
      inputs,
      functools.partial(model.projector, train=True),
    )

  def _labelled_loss(self, model, batch):
    """(mean cross-entropy of every labelled view's logits, train top-1 of the first)."""
    labelled = batch['labelled']
    targets = losses.one_hot_targets(labelled['labels'], self.data.num_classes)
    logits = views.by_size(lambda x: model(x, train=True), labelled['views'])
    loss = jnp.mean(jnp.stack([jnp.mean(losses.cross_entropy(l, targets)) for l in logits]))
    return loss, losses.accuracy(logits[0], labelled['labels'])

  def _finetune(self, model, state, batch):
    loss, top1 = self._labelled_loss(model, batch)
    return loss, (state, {'train_top1': top1})

  def _distill(self, model, state, batch):
    unlabelled = batch['unlabelled']['views']
    teacher = self.teacher.model(state['teacher'])
    teacher_logits = views.by_size(lambda x: teacher(x, train=False), unlabelled)
    student_logits = views.by_size(lambda x: model(x, train=True), unlabelled)
    distill = jnp.mean(
      jnp.stack(
        [
          jnp.mean(
            losses.distillation_loss(s, jax.lax.stop_gradient(t), self.hp.distill_temperature)
          )
          for s, t in zip(student_logits, teacher_logits)
        ]
      )
    )
    metrics = {
      'loss_distill': distill,
      'teacher_agreement': jnp.mean(
        jnp.argmax(student_logits[0], -1) == jnp.argmax(teacher_logits[0], -1)
      ),
    }
    if not self.hp.label_weight:
      return distill, (state, metrics)
    labelled, top1 = self._labelled_loss(model, batch)
    metrics.update(loss_labelled=labelled, train_top1=top1)
    return distill + self.hp.label_weight * labelled, (state, metrics)

  def predict(self, model, images):
    if not self.has_classifier:
      raise NotImplementedError('SimCLRv2 pretraining has no classifier: evaluate its kNN probe.')
    return model(images, train=False)
