"""What Suave and Daino share as methods (not a method): a `PrototypeModel` whose first C of
K prototypes are the class prototypes, the student's joint pass with its labelled targets, and
`predict` reading the class prototypes' scores."""

from __future__ import annotations

import jax

from semi_ssl.errors import require
from semi_ssl.methods import base, views
from semi_ssl.models.prototypes import PrototypeModel
from semi_ssl.ops.normalize import l2_normalize
from semi_ssl.ops import losses


class PrototypeMethod(base.Method):
  """A method on a `PrototypeModel`, with hyperparameters in `config.<config_key>`:
  projector_hidden_dim, embed_dim, projector_layers, num_prototypes (0: one per class),
  normalize_prototypes, label_smoothing, the labelled images' mixing (mixup_alpha, cutmix_alpha,
  mixup_mode: see `views.mix_labelled`) and loss_weighting (see `combine`)."""

  config_key: str

  def __init__(self, config, data, mesh):
    super().__init__(config, data, mesh)
    self.hp = config[self.config_key]
    self.num_prototypes = self.hp.num_prototypes or data.num_classes
    require(
      self.num_prototypes >= data.num_classes,
      f'config.{self.config_key}.num_prototypes={self.num_prototypes} is below the '
      f'{data.num_classes} classes: use 0 (= number of classes) or more.',
    )
    self._check_mixing(config)

  def create_model(self, rngs, **head):
    """The `PrototypeModel`; `head`: its head options (`head`, `norm_last_layer`)."""
    return PrototypeModel(
      base.create_backbone(self.config, self.data, rngs),
      hidden_dim=self.hp.projector_hidden_dim,
      embed_dim=self.hp.embed_dim,
      num_layers=self.hp.projector_layers,
      num_prototypes=self.num_prototypes,
      rngs=rngs,
      **head,
    )

  def project_params(self, params):
    """With `normalize_prototypes`, every prototype (row of `prototypes/kernel`) scaled to unit
    norm, at the start and after every update. SwAV and Suave renormalise the prototypes before
    every step (github.com/facebookresearch/swav at 06b1b7c, main_swav.py lines 277-281;
    github.com/pietroastolfi/suave-daino at 9adf13d, suave/main_suave.py lines 571-575:
    `w = nn.functional.normalize(w, dim=1, p=2)`): the forward passes see the same prototypes,
    and the optimiser (weight decay, LARS's trust ratio) sees unit rows, not their drift."""
    if not self.hp.normalize_prototypes:
      return params

    def project(path, x):
      names = [getattr(key, 'key', None) for key in path[:2]]
      return l2_normalize(x) if names == ['prototypes', 'kernel'] else x

    return jax.tree_util.tree_map_with_path(project, params)

  def student_outputs(self, model, batch, key):
    """`views.student_outputs` with this method's targets: (targets, labelled, unlabelled)."""
    return views.student_outputs(
      model,
      batch,
      key,
      num_classes=self.data.num_classes,
      num_prototypes=self.num_prototypes,
      label_smoothing=self.hp.label_smoothing,
      mixup_alpha=self.hp.mixup_alpha,
      cutmix_alpha=self.hp.cutmix_alpha,
      mixup_mode=self.hp.mixup_mode,
    )

  def _check_mixing(self, config):
    key, hp = self.config_key, self.hp
    for name in ('mixup_alpha', 'cutmix_alpha'):
      require(hp[name] >= 0, f'config.{key}.{name}={hp[name]} must be >= 0 (0: off).')
    require(
      hp.mixup_mode in ('replace', 'extend'),
      f"config.{key}.mixup_mode='{hp.mixup_mode}' is unknown: use 'replace' or 'extend'.",
    )
    require(
      hp.loss_weighting in ('images', 'crops'),
      f"config.{key}.loss_weighting='{hp.loss_weighting}' is unknown: use 'images' or 'crops'.",
    )
    aug = config.augment
    labelled = aug.get('labelled')
    if labelled:
      sizes = {labelled.size}
    else:  # The unlabelled views.
      sizes = {aug.global_size} | ({aug.local_size} if aug.num_local_crops else set())
    require(
      not hp.cutmix_alpha or len(sizes) == 1,
      f'config.{key}.cutmix_alpha={hp.cutmix_alpha} pastes one box into every labelled view, '
      f'but they have sizes {sorted(sizes)}: give them one size with config.augment.labelled, '
      'or set cutmix_alpha=0.',
    )

  def combine(self, terms, views):
    """One loss from per-example terms T x [N_t] whose examples have views[t] crops each:
    `losses.combine` by `config.<key>.loss_weighting`, 'images' (each example counts once) or
    'crops' (each crop counts once, as the official code weighs its terms: main_suave.py
    lines 687-696, main_daino.py lines 517-525, of github.com/pietroastolfi/suave-daino)."""
    return losses.combine(*terms, views=views if self.hp.loss_weighting == 'crops' else None)

  def predict(self, model, images):
    """The class prototypes' scores [B, C] of normalised eval images [B, H, W, C]."""
    return model(images, train=False)[:, : self.data.num_classes]
