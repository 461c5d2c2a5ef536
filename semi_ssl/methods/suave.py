"""Suave (Fini et al., CVPR 2023, "Semi-supervised learning made simple with self-supervised
clustering"): SwAV whose first C prototypes are the class prototypes.

One cross-entropy over prototype scores / temperature: labelled views target their (smoothed)
one-hot label; unlabelled views target the Sinkhorn assignment of another global view of the
same image (swapped prediction; local crops predict every global view's assignment). The
terms are weighted by their share of the batch's images, or of its crops as the official code
does (`loss_weighting`). `predict` reads the class prototypes' scores directly: there is no
separate classifier.

The assignments come from the same forward pass as the loss, detached (`suave/main_suave.py`
of github.com/pietroastolfi/suave-daino: `output_for_sk = unlab_output`): no second pass, so
BatchNorm's running statistics move only with the student's passes.

Options of the paper's code, all off by default: a queue of past unlabelled features per global
crop that joins that crop's Sinkhorn problem once full (small batches), frozen prototypes for
the first steps, only the heads trained for the first steps, an EMA (momentum) encoder whose
own pass and prototypes compute the assignments (its momentum constant, or rising to 1 on a
cosine as the paper's code has it), prototypes kept unit-norm (`PrototypeMethod.project_params`),
mixup / CutMix of the labelled images (replacing them, or extending the batch with the mixes as
the official code does), and mixup / CutMix of the unlabelled global views, a third term.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from semi_ssl.errors import require
from semi_ssl.methods import views
from semi_ssl.methods.prototypes import PrototypeMethod
from semi_ssl.methods.teacher import EMATeacher
from semi_ssl.ops import losses, mixup, queue, sinkhorn


class Suave(PrototypeMethod):
  """See the module docstring; hyperparameters live in `config.suave`."""

  config_key = 'suave'

  def __init__(self, config, data, mesh):
    super().__init__(config, data, mesh)
    hp = self.hp
    require(
      0.0 <= hp.ema_momentum <= 1.0,
      f'config.suave.ema_momentum={hp.ema_momentum} must be in [0, 1] (0: no EMA teacher).',
    )
    require(
      hp.queue_size >= 0, f'config.suave.queue_size={hp.queue_size} must be >= 0 (0: no queue).'
    )
    for key in ('temperature', 'sinkhorn_epsilon'):
      require(hp[key] > 0.0, f'config.suave.{key}={hp[key]} must be positive, e.g. 0.1.')
    require(
      hp.ema_momentum_schedule in ('constant', 'cosine'),
      f"config.suave.ema_momentum_schedule='{hp.ema_momentum_schedule}' is unknown: use "
      "'constant' or 'cosine' (from ema_momentum to 1 over num_steps).",
    )
    require(
      not hp.mixup_unlabelled or (hp.mixup_alpha or hp.cutmix_alpha),
      'config.suave.mixup_unlabelled=True mixes with mixup_alpha and cutmix_alpha: set one > 0.',
    )
    require(
      not hp.mixup_unlabelled or config.augment.num_global_crops >= 2,
      'config.suave.mixup_unlabelled=True mixes two global views: set '
      'config.augment.num_global_crops=2.',
    )
    # 'cosine': main_suave.py (github.com/pietroastolfi/suave-daino at 9adf13d) lines 124-128
    # and 453, `cosine_scheduler(args.momentum_encoder, 1, args.epochs, len(train_loader))`.
    cosine_steps = config.num_steps if hp.ema_momentum_schedule == 'cosine' else 0
    self.teacher = EMATeacher(hp.ema_momentum, cosine_steps) if hp.ema_momentum else None

  def init_state(self, params):
    state = {}
    if self.teacher:
      state['teacher'] = self.teacher.init(params)
    if self.hp.queue_size:
      # One queue of `queue_size` per global crop (SwAV's queue[i]), newest entries first, and
      # the number of entries each holds (saturating at `queue_size`).
      state['queue'] = queue.init(
        self.hp.queue_size, self.hp.embed_dim, crops=self.config.augment.num_global_crops
      )['embeddings']
      state['queue_count'] = jnp.zeros((), jnp.int32)
    return state

  def loss(self, model, state, batch, key, step):
    hp = self.hp
    labels = batch['labelled']['labels']
    num_global = self.config.augment.num_global_crops
    if hp.mixup_unlabelled:
      key, mix_key = jax.random.split(key)
      batch, lam = self._with_mixed_unlabelled(batch, mix_key)
    targets, (_, labelled_scores), (embeds, scores) = self.student_outputs(model, batch, key)
    if hp.mixup_unlabelled:
      embeds, scores, mixed_scores = embeds[:-1], scores[:-1], scores[-1]
    sk_embeds, sk_scores, prototypes = self._sinkhorn_inputs(
      model,
      state,
      batch['unlabelled']['views'][:num_global],
      embeds[:num_global],
      scores[:num_global],
    )
    assignments, state = self._assign(state, sk_embeds, sk_scores, prototypes)
    loss_l = losses.labelled_loss(labelled_scores, targets, hp.temperature)
    loss_u = losses.swapped_assignment_loss(scores, assignments, hp.temperature)
    metrics = {
      'loss_labelled': jnp.mean(loss_l),
      'loss_unlabelled': jnp.mean(loss_u),
      # The clean labelled rows: mixup's 'extend' mode appends the mixed ones.
      'train_top1': losses.accuracy(
        labelled_scores[0][: labels.shape[0], : self.data.num_classes], labels
      ),
    }
    terms, views = [loss_l, loss_u], [len(labelled_scores), len(scores)]
    if hp.mixup_unlabelled:
      mixed_targets = mixup.mix_targets(assignments[0], assignments[1], lam)
      loss_m = losses.cross_entropy(mixed_scores / hp.temperature, mixed_targets)
      metrics['loss_mixed_unlabelled'] = jnp.mean(loss_m)
      terms, views = [*terms, loss_m], [*views, 1]
    return self.combine(terms, views), (state, metrics)

  def _with_mixed_unlabelled(self, batch, key):
    """(`batch` with one more unlabelled view [B_u, h, w, C] at the end, lam []): global view
    0 mixed with global view 1 in reverse order (main_suave.py with --mixup_unlab true
    --mixup_unlab_type globals: src/mixup.py `MultiViewCollateMixup`, lines 217-262). It joins
    the student's pass but not the assignments, the queue or the swapped loss; it targets
    lam q_0 + (1 - lam) q_1[::-1] of the global views' assignments (main_suave.py lines
    588-597, 647-655)."""
    hp, views = self.hp, batch['unlabelled']['views']
    weights, lam = mixup.pixel_weights(
      key, *views[0].shape[1:3], mixup_alpha=hp.mixup_alpha, cutmix_alpha=hp.cutmix_alpha
    )
    mixed = mixup.mix(views[0], views[1], weights)
    return {**batch, 'unlabelled': {**batch['unlabelled'], 'views': [*views, mixed]}}, lam

  def _sinkhorn_inputs(self, model, state, global_views, embeds, scores):
    """What the assignments of the G global unlabelled views come from, without gradient:
    (embeddings G x [B_u, D], scores G x [B_u, K], the prototypes that score queue entries).

    Without a teacher: `embeds` and `scores`, the student's own pass (main_suave.py:
    `output_for_sk = unlab_output`, `embedding[lab_bs:].detach()`). With the EMA teacher: the
    teacher's pass over `global_views` together and its prototypes (main_suave.py:
    `model_for_sk = ema_model`, `ema_model(inputs[:nmb_crops[0]])`); its BatchNorm updates
    stay on the teacher's copy of the model state and are dropped.
    """
    if 'teacher' not in state:
      return (
        [jax.lax.stop_gradient(z) for z in embeds],
        [jax.lax.stop_gradient(s) for s in scores],
        model.prototypes,
      )
    teacher = self.teacher.model(model, state['teacher'])
    embeds, scores = views.prototype_outputs(teacher, global_views, train=True)
    return (
      [jax.lax.stop_gradient(z) for z in embeds],
      [jax.lax.stop_gradient(s) for s in scores],
      teacher.prototypes,
    )

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
    queues, count = state['queue'], state['queue_count']
    size = queues.shape[1]
    full = count >= size
    assignments = []
    for past, s in zip(queues, scores):
      queued = jax.lax.stop_gradient(prototypes(past))
      with_queue = run(jnp.concatenate([s, queued]))[: s.shape[0]]
      assignments.append(jnp.where(full, with_queue, run(s)))
    queues = jnp.stack([queue.push(past, z) for past, z in zip(queues, embeds)])
    count = jnp.minimum(count + embeds[0].shape[0], size)
    return assignments, {**state, 'queue': queues, 'queue_count': count}

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
    if self.teacher:
      # main_suave.py lines 577-580 renormalise the EMA encoder's prototypes as the student's.
      teacher = self.project_params(state['teacher'])
      state = {**state, 'teacher': self.teacher.update(teacher, params, step)}
    return state
