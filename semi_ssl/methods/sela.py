"""SeLa (Asano, Rupprecht, Vedaldi, ICLR 2020, "Self-labelling via simultaneous clustering and
representation learning"): `num_heads` linear clustering heads of `num_clusters` each on the
backbone features, trained by the cross-entropy of every view of an image to its current
self-label in each head (the mean over the heads); the self-labels are equipartitioned hard
labels of the whole unlabelled set, found by the fast Sinkhorn-Knopp of `sinkhorn.self_labels`
before the steps of `sinkhorn.relabel_steps`. The official code is github.com/yukimasano/self-label
(at 3891e37; PyTorch), cited as [O] file:line.

Model     [O] models/resnetv1.py:112-117 (resnetv2.py:58-63): one `nn.Linear(features, ncl)` per
          head on the pooled features, here one Linear of num_heads * num_clusters outputs
          (the same map), logits [B, H, K].
Labels    int32 [N, H] in the method state (checkpointed): at the start each head's labels are
          i % K of image i, permuted at random ([O] main.py:150-155, cifar.py:198-202), so that
          the clusters are equally full; the first relabelling, before step 0 ([O] main.py:84-90
          with optimize_times' last point 0), replaces them.
Relabel   The trainer's pass over the unlabelled set (`dataset_pass_steps`) stores each image's
          backbone features of the eval view [N, D]; `absorb_dataset_pass` applies
          the heads in turn (`lax.map`) and solves each head's transport problem on its softmax
          [N, K] ([O] sinkhornknopp.py:18-35, 52-63, GPU form :84-111: the pre-head
          activations [N, D] stored, each head's matmul and softmax in turn). The rows arrive
          split over the mesh's data axis and the sums over N are global (GSPMD).
          Memory, per device: the features N * D / devices plus a few [N, K] / devices arrays
          of one head (its logits, softmax, log P ** lam), whatever the number of heads.
          ImageNet (N 1,281,167, ResNet-50's D 2048, 10 heads of 3000, float32), over the mesh:
          features 10.5 GB + 15.4 GB per [N, K] array, instead of the 154 GB of every head's
          softmax [N, H, K]. The heads' iteration counts and final errors are logged as
          `relabel_iters` and `relabel_error` (the maxima over the heads).
Loss      Cross-entropy of every unlabelled view (multi-crop: one backbone call per crop size,
          `views.by_size`) to its image's self-label in each head, the mean over heads ([O]
          main.py:95-99) and views.

Unsupervised form (`semi_supervised=False`): the paper's. Labelled images and their labels are
unused; there is no classifier (`has_classifier` False): the evaluation reports the kNN probe
on the backbone features.

Semi-supervised form (`semi_supervised=True`; ours, the paper has none): head 0's first C
clusters are the classes, `predict` reads their logits. The labelled images are a stream of their
own here, not rows of the pass over the unlabelled set, so they enter head 0's transport problem
as fixed rows by their class counts (`DataInfo.labelled_counts`, `self_labels(fixed_counts=)`):
the unlabelled rows are spread so that every cluster of head 0 ends with an equal share of
labelled and unlabelled images together (a class with many labelled images gets fewer unlabelled
ones). The other heads cluster the unlabelled images only. Where the labelled images are also
among the unlabelled ones (ImageNet's SimCLR protocol), they are free rows of the pass as well
and so counted twice in head 0's marginals (up to 10% of the rows there). Labels and
self-labels meet in one cross-entropy: every labelled view targets its label in head 0, every
unlabelled view its self-labels, each view one term (`losses.combine` over crops); labelled
views and unlabelled views of one size share a backbone call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from semi_ssl.errors import require
from semi_ssl.methods import base, views
from semi_ssl.ops import losses, sinkhorn


class SeLaModel(nnx.Module):
  """backbone -> `num_heads` linear clustering heads of `num_clusters` each."""

  def __init__(self, backbone: nnx.Module, *, num_heads: int, num_clusters: int, rngs: nnx.Rngs):
    self.backbone = backbone
    self.heads = nnx.Linear(backbone.feature_dim, num_heads * num_clusters, rngs=rngs)
    self.num_heads, self.num_clusters = num_heads, num_clusters

  def logits(self, features: jax.Array) -> jax.Array:
    """Backbone features [B, F] -> logits [B, H, K] float32."""
    logits = self.heads(features).astype(jnp.float32)
    return logits.reshape(-1, self.num_heads, self.num_clusters)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H_img, W, C] -> logits [B, H, K] float32."""
    return self.logits(self.backbone(x, train=train))


class SeLa(base.Method):
  """See the module docstring; hyperparameters live in `config.sela`."""

  def __init__(self, config, data, mesh):
    super().__init__(config, data, mesh)
    self.hp = hp = config.sela
    for key, least in (('num_heads', 1), ('num_clusters', 2), ('max_iters', 1)):
      require(
        isinstance(hp[key], int) and hp[key] >= least,
        f'config.sela.{key}={hp[key]!r} must be an integer >= {least}.',
      )
    require(hp.lam > 0, f'config.sela.lam={hp.lam} must be > 0 (the paper: 25; CIFAR: 10).')
    require(hp.tol >= 0, f'config.sela.tol={hp.tol} must be >= 0 (the paper: 0.1).')
    self.semi_supervised = bool(hp.semi_supervised)
    if self.semi_supervised:
      require(
        hp.num_clusters >= data.num_classes,
        f'config.sela.num_clusters={hp.num_clusters}: the semi-supervised form needs the '
        f"{data.num_classes} classes among head 0's clusters: set it >= {data.num_classes}.",
      )
    self.has_classifier = self.semi_supervised
    self.pass_steps = sinkhorn.relabel_steps(
      config.num_steps, hp.num_label_updates, hp.relabel_power
    )

  def create_model(self, rngs):
    return SeLaModel(
      base.create_backbone(self.config, self.data, rngs),
      num_heads=self.hp.num_heads,
      num_clusters=self.hp.num_clusters,
      rngs=rngs,
    )

  def init_state(self, params):
    """Labels int32 [N, H]: head h's are i % K of image i, permuted by a key of the seed and h."""
    del params
    hp, num = self.hp, self.data.num_unlabelled
    keys = jax.random.split(jax.random.key(self.config.seed), hp.num_heads)
    spread = jnp.arange(num, dtype=jnp.int32) % hp.num_clusters
    labels = jax.vmap(lambda key: jax.random.permutation(key, spread))(keys)
    return {
      'labels': labels.T,
      'relabel_iters': jnp.zeros(hp.num_heads, jnp.int32),
      'relabel_error': jnp.zeros(hp.num_heads, jnp.float32),
    }

  def dataset_pass_steps(self):
    return self.pass_steps

  def dataset_pass_outputs(self, model, state, images):
    """The backbone features [B, D] of the eval view; the heads are applied in the absorb."""
    del state
    return {'features': model.backbone(images, train=False)}

  def absorb_dataset_pass(self, model, state, outputs, step):
    """The self-labels [N, H] of the features [N, D], one head's softmax [N, K] at a time."""
    del step
    hp, features = self.hp, outputs['features']
    kernel = model.heads.kernel.value.reshape(-1, hp.num_heads, hp.num_clusters)  # [D, H, K]
    bias = model.heads.bias.value.reshape(hp.num_heads, hp.num_clusters)

    def solve(head_and_counts):
      head, counts = head_and_counts
      logits = features @ kernel[:, head] + bias[head]  # [N, K], as SeLaModel.logits' head
      return sinkhorn.self_labels(
        jax.nn.softmax(logits.astype(jnp.float32), axis=-1),
        lam=hp.lam,
        tol=hp.tol,
        max_iters=hp.max_iters,
        fixed_counts=counts,
      )

    out = jax.lax.map(solve, (jnp.arange(hp.num_heads), self._fixed_counts()))
    return {
      **state,
      'labels': out.labels.T,
      'relabel_iters': out.num_iters,
      'relabel_error': out.error,
    }

  def _fixed_counts(self) -> jax.Array | None:
    """float32 [H, K]: the labelled images of each class as fixed rows of head 0's first C
    clusters, none elsewhere; None in the unsupervised form."""
    if not self.semi_supervised:
      return None
    counts = self.data.labelled_counts
    require(
      len(counts) == self.data.num_classes,
      f'SeLa: DataInfo.labelled_counts has {len(counts)} classes, not {self.data.num_classes}; '
      'build the method with train.create_method, which counts the labelled images.',
    )
    fixed = jnp.zeros((self.hp.num_heads, self.hp.num_clusters), jnp.float32)
    return fixed.at[0, : len(counts)].set(jnp.asarray(counts, jnp.float32))

  def loss(self, model, state, batch, key, step):
    del key, step
    unlabelled = batch['unlabelled']
    labelled_views = batch['labelled']['views'] if self.semi_supervised else []
    logits = views.by_size(
      lambda x: model.backbone(x, train=True),
      [*labelled_views, *unlabelled['views']],
      head=model.logits,
    )
    logits_l, logits_u = logits[: len(labelled_views)], logits[len(labelled_views) :]
    self_labels = state['labels'][unlabelled['indices']]  # [B_u, H]
    targets = jax.nn.one_hot(self_labels, self.hp.num_clusters)  # [B_u, H, K]
    loss_u = jnp.mean(
      jnp.stack([jnp.mean(losses.cross_entropy(l, targets), axis=1) for l in logits_u]), axis=0
    )
    metrics = {
      'loss_unlabelled': jnp.mean(loss_u),
      'self_label_top1': losses.accuracy(logits_u[0][:, 0], self_labels[:, 0]),
      'relabel_iters': jnp.max(state['relabel_iters']),
      'relabel_error': jnp.max(state['relabel_error']),
    }
    if not self.semi_supervised:
      return jnp.mean(loss_u), (state, metrics)
    labels = batch['labelled']['labels']
    class_targets = jax.nn.one_hot(labels, self.hp.num_clusters)
    loss_l = jnp.mean(
      jnp.stack([losses.cross_entropy(l[:, 0], class_targets) for l in logits_l]), axis=0
    )
    metrics.update(
      loss_labelled=jnp.mean(loss_l),
      train_top1=losses.accuracy(logits_l[0][:, 0, : self.data.num_classes], labels),
    )
    loss = losses.combine(loss_l, loss_u, views=[len(logits_l), len(logits_u)])
    return loss, (state, metrics)

  def predict(self, model, images):
    """Head 0's logits of its first C clusters, the classes [B, C] (semi-supervised form)."""
    if not self.has_classifier:
      raise NotImplementedError('SeLa unsupervised has no classifier: evaluate its kNN probe.')
    return model(images, train=False)[:, 0, : self.data.num_classes]
