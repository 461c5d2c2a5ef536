"""The prototype model of Suave and Daino (and SwAV-like methods): backbone -> projector ->
L2-normalised embedding -> cosine scores of K prototypes."""

import jax
from flax import nnx

from semi_ssl.models import heads
from semi_ssl.ops.normalize import l2_normalize


class PrototypeModel(nnx.Module):
  """backbone -> projector -> L2-normalised embedding -> cosine scores of the prototypes.

  Its parameters live under ``backbone``, ``projector`` and ``prototypes``. ``head``: 'swav',
  a projector of Linear -> BatchNorm -> ReLU layers (SwAV's projection head), prototypes drawn
  from N(0, 1); or 'dino', DINOHead's layers (`heads.DINO_MLP`, `heads.DINO_PROTOTYPES_INIT`).
  ``norm_last_layer`` False: each prototype's norm is learnt (`heads.Prototypes`' learn_norm).
  """

  def __init__(
    self,
    backbone: nnx.Module,
    *,
    hidden_dim: int,
    embed_dim: int,
    num_layers: int,
    num_prototypes: int,
    rngs: nnx.Rngs,
    head: str = 'swav',
    norm_last_layer: bool = True,
  ):
    dino = head == 'dino'
    self.backbone = backbone
    self.projector = heads.MLP(
      backbone.feature_dim,
      hidden_dim,
      embed_dim,
      num_layers=num_layers,
      rngs=rngs,
      **(heads.DINO_MLP if dino else dict(batch_norm=True)),
    )
    self.prototypes = heads.Prototypes(
      embed_dim,
      num_prototypes,
      rngs=rngs,
      learn_norm=not norm_last_layer,
      **(dict(kernel_init=heads.DINO_PROTOTYPES_INIT) if dino else {}),
    )

  def embed(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, C] -> unit-norm embeddings [B, embed_dim]."""
    return self.embed_features(self.backbone(x, train=train), train=train)

  def embed_features(self, features: jax.Array, *, train: bool) -> jax.Array:
    """Backbone features [B, F] -> unit-norm embeddings [B, embed_dim]."""
    return l2_normalize(self.projector(features, train=train))

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, C] -> cosine scores [B, num_prototypes]."""
    return self.prototypes(self.embed(x, train=train))
