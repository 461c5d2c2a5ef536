"""What Suave and Daino share as methods (not a method): a `PrototypeModel` whose first C of
K prototypes are the class prototypes, the student's joint pass with its labelled targets, and
`predict` reading the class prototypes' scores."""

from __future__ import annotations

from semi_ssl.errors import require
from semi_ssl.methods import base, views
from semi_ssl.models.prototypes import PrototypeModel


class PrototypeMethod(base.Method):
  """A method on a `PrototypeModel`, with hyperparameters in `config.<config_key>`:
  projector_hidden_dim, embed_dim, projector_layers, num_prototypes (0: one per class),
  label_smoothing and mixup_alpha."""

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

  def create_model(self, rngs):
    return PrototypeModel(
      base.create_backbone(self.config, self.data, rngs),
      hidden_dim=self.hp.projector_hidden_dim,
      embed_dim=self.hp.embed_dim,
      num_layers=self.hp.projector_layers,
      num_prototypes=self.num_prototypes,
      rngs=rngs,
    )

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
    )

  def predict(self, model, images):
    """The class prototypes' scores [B, C] of normalised eval images [B, H, W, C]."""
    return model(images, train=False)[:, : self.data.num_classes]
