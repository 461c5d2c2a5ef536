"""The prototype model of Suave and Daino (and SwAV-like methods): backbone -> projector ->
L2-normalised embedding -> cosine scores of K prototypes."""

import jax
from flax import nnx

from semi_ssl.models import heads
from semi_ssl.ops.normalize import l2_normalize


class PrototypeModel(nnx.Module):
  """backbone -> projector -> L2-normalised embedding -> cosine scores of the prototypes.

  Its parameters live under ``backbone``, ``projector`` and ``prototypes``.
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
  ):
    self.backbone = backbone
    self.projector = heads.MLP(
      backbone.feature_dim, hidden_dim, embed_dim, num_layers=num_layers, batch_norm=True, rngs=rngs
    )
    self.prototypes = heads.Prototypes(embed_dim, num_prototypes, rngs=rngs)

  def embed(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, C] -> unit-norm embeddings [B, embed_dim]."""
    return self.embed_features(self.backbone(x, train=train), train=train)

  def embed_features(self, features: jax.Array, *, train: bool) -> jax.Array:
    """Backbone features [B, F] -> unit-norm embeddings [B, embed_dim]."""
    return l2_normalize(self.projector(features, train=train))

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, C] -> cosine scores [B, num_prototypes]."""
    return self.prototypes(self.embed(x, train=train))
