"""Daino (Fini et al., CVPR 2023, "Semi-supervised learning made simple with self-supervised
clustering", Sec. 3): DINO turned semi-supervised the way Suave turns SwAV.

The model is Suave's `PrototypeModel` (backbone -> projector -> L2-normalised embedding ->
cosine scores of K prototypes, the first C of them the class prototypes), with SwAV's head
(`head='swav'`: BatchNorm + ReLU) or DINOHead (`head='dino'`: GELU, no BatchNorm, and with
`norm_last_layer=False`, as the paper's scripts, a learnt norm per prototype). A teacher, the EMA
of the student with a momentum that rises from `teacher_momentum` to 1 on a cosine schedule
(`methods/teacher.py`), sees only the global views of the unlabelled images; its scores,
centred (minus an EMA of their batch mean) and sharpened (divided by a teacher temperature that
may warm up linearly, step by step or epoch by epoch as DINO), give the targets

    q = softmax((teacher_scores - center) / teacher_temperature).

As in Suave, one cross-entropy over student scores / student_temperature: labelled views
target their (smoothed) one-hot label, every unlabelled view targets the teacher's q of every
*other* global view, and the two terms are weighted by their share of the batch's images, or
of its crops as the official code does (`loss_weighting`).

`predict` reads the student's class-prototype scores. The paper's code (daino/main_daino.py
of github.com/pietroastolfi/suave-daino at 9adf13d) validates the teacher after every epoch
(line 429) and both networks at the end (lines 458-459): the teacher's figures are reported
too, as `teacher_top1`, `teacher_knn_top1`, ... (`eval_params`), with the student's BatchNorm
statistics (the teacher's own passes do not keep theirs, `methods/teacher.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from semi_ssl.errors import require
from semi_ssl.methods import views
from semi_ssl.methods.prototypes import PrototypeMethod
from semi_ssl.methods.teacher import EMATeacher
from semi_ssl.ops import losses
from semi_ssl.ops.ema import ema


def teacher_temperature(
  step: jax.Array, *, start: float, end: float, warmup_steps: int, epoch_steps: int = 0
) -> jax.Array:
  """Linear from `start` (step 0) to `end` (`warmup_steps`), then `end`.

  With `epoch_steps` (steps per epoch, dividing `warmup_steps`), constant within each epoch:
  DINO's `np.linspace(start, end, W)[epoch]` over the W warm-up epochs, `end` in the last of
  them and after (github.com/facebookresearch/dino at 7c446df, main_dino.py lines 374-377 and
  388; the same in daino/main_daino.py lines 613-617 and 627).
  """
  if not warmup_steps:
    return jnp.asarray(end, jnp.float32)
  if not epoch_steps:
    return start + (end - start) * jnp.clip(step / warmup_steps, 0.0, 1.0)
  epoch, warmup_epochs = step // epoch_steps, warmup_steps // epoch_steps
  progress = jnp.where(epoch < warmup_epochs, epoch / max(warmup_epochs - 1, 1), 1.0)
  return start + (end - start) * progress


def teacher_targets(
  scores: list[jax.Array], center: jax.Array, temperature: jax.Array
) -> list[jax.Array]:
  """Centred, sharpened teacher distributions: G x [N, K] scores, center [K] -> G x [N, K]."""
  return [jax.nn.softmax((s - center) / temperature, axis=-1) for s in scores]


def update_center(center: jax.Array, scores: list[jax.Array], momentum: float) -> jax.Array:
  """EMA [K] of the teacher scores' mean over every global view and example."""
  return ema(center, jnp.mean(jnp.concatenate(scores), axis=0), momentum)


def entropy(probs: jax.Array) -> jax.Array:
  """Per-row entropy in nats: [N, K] -> [N]."""
  return -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-12)), axis=-1)


class Daino(PrototypeMethod):
  """See the module docstring; hyperparameters live in `config.daino`."""

  config_key = 'daino'

  def __init__(self, config, data, mesh):
    super().__init__(config, data, mesh)
    hp = self.hp
    for key in ('teacher_momentum', 'center_momentum'):
      require(0.0 <= hp[key] <= 1.0, f'config.daino.{key}={hp[key]} must be in [0, 1].')
    for key in ('student_temperature', 'teacher_temperature', 'teacher_temperature_warmup_start'):
      require(hp[key] > 0.0, f'config.daino.{key}={hp[key]} must be positive, e.g. 0.1.')
    require(
      hp.teacher_temperature_warmup_steps >= 0,
      f'config.daino.teacher_temperature_warmup_steps={hp.teacher_temperature_warmup_steps}'
      ' must be >= 0 (0 = no warm-up).',
    )
    epoch_steps = hp.teacher_temperature_update_steps
    require(
      epoch_steps == 0
      or (epoch_steps > 0 and hp.teacher_temperature_warmup_steps % epoch_steps == 0),
      f'config.daino.teacher_temperature_update_steps={epoch_steps} must be 0 (the temperature '
      'changes every step) or a positive divisor of teacher_temperature_warmup_steps='
      f'{hp.teacher_temperature_warmup_steps} (whole warm-up epochs).',
    )
    require(
      hp.head in ('swav', 'dino'),
      f"config.daino.head='{hp.head}' is unknown: use 'swav' (BatchNorm + ReLU) or 'dino' "
      '(DINOHead: GELU, no BatchNorm).',
    )
    aug = config.augment
    require(
      aug.num_global_crops + aug.num_local_crops >= 2,
      'Daino needs a second view to predict the teacher from: set '
      'config.augment.num_global_crops=2 or add local crops.',
    )
    self.teacher = EMATeacher(hp.teacher_momentum, cosine_steps=config.num_steps)

  def create_model(self, rngs):
    return super().create_model(rngs, head=self.hp.head, norm_last_layer=self.hp.norm_last_layer)

  def init_state(self, params):
    return {
      'teacher': self.teacher.init(params),
      'center': jnp.zeros((self.num_prototypes,), jnp.float32),
    }

  def loss(self, model, state, batch, key, step):
    hp = self.hp
    targets, (_, labelled_scores), (_, scores) = self.student_outputs(model, batch, key)
    teacher_scores = self._teacher_scores(
      model, state['teacher'], batch['unlabelled']['views'][: self.config.augment.num_global_crops]
    )
    temperature = teacher_temperature(
      step,
      start=hp.teacher_temperature_warmup_start,
      end=hp.teacher_temperature,
      warmup_steps=hp.teacher_temperature_warmup_steps,
      epoch_steps=hp.teacher_temperature_update_steps,
    )
    assignments = teacher_targets(teacher_scores, state['center'], temperature)
    loss_l = losses.labelled_loss(labelled_scores, targets, hp.student_temperature)
    loss_u = losses.swapped_assignment_loss(scores, assignments, hp.student_temperature)
    state = {**state, 'center': update_center(state['center'], teacher_scores, hp.center_momentum)}
    metrics = {
      'loss_labelled': jnp.mean(loss_l),
      'loss_unlabelled': jnp.mean(loss_u),
      # Against the dominant class of the targets: the label, or with mixup the
      # label of the larger share.
      'train_top1': losses.accuracy(
        labelled_scores[0][:, : self.data.num_classes], jnp.argmax(targets, axis=-1)
      ),
      'teacher_temperature': temperature,
      # Near 0: one-hot targets; near log K: uniform (collapse).
      'target_entropy': jnp.mean(jnp.stack([entropy(q) for q in assignments])),
    }
    views = [len(labelled_scores), len(scores)]
    return self.combine([loss_l, loss_u], views), (state, metrics)

  def _teacher_scores(self, model, teacher, global_views):
    """Teacher scores (no gradient) G x [B_u, K] of the G global unlabelled views.

    The views go through the teacher together (`views.by_size`), so its BatchNorm sees all of
    them (DINO; main_daino.py: `teacher(images[:2])`).
    """
    _, scores = views.prototype_outputs(
      self.teacher.model(model, teacher), global_views, train=True
    )
    return [jax.lax.stop_gradient(s) for s in scores]

  def update_state(self, params, state, step):
    return {**state, 'teacher': self.teacher.update(state['teacher'], params, step)}

  def eval_params(self, params, state):
    return {'teacher': state['teacher']}
