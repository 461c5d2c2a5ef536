"""How methods pass views through their networks (one call per view size), and what they do
with the views of a batch before their loss: labelled targets, mixup, and the student's joint
pass over labelled and unlabelled views (not a method)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from semi_ssl.ops import losses, mixup

PyTree = Any


def by_size(
  network: Callable[[jax.Array], PyTree],
  views: Sequence[jax.Array],
  head: Callable[[PyTree], PyTree] | None = None,
) -> list[PyTree]:
  """`head(network(view))` of every view [B_v, h, w, C], with one `network` call per view size.

  The views of one size (h, w, C) are concatenated along the batch axis, in their order in
  `views`, and go through `network` in one call: BatchNorm normalises them together and moves
  its running statistics once per size, not once per view. `head` (optional) then runs once
  on the outputs of all views together, sizes in order of first appearance. This is the
  multi-crop forward of SwAV (github.com/facebookresearch/swav, src/resnet50.py lines 308-323,
  `ResNet.forward`: `idx_crops = cumsum(unique_consecutive(sizes, return_counts=True)[1])`,
  one `forward_backbone` per run of equal sizes, one `forward_head` on all), as the Suave and
  Daino code runs it (github.com/pietroastolfi/suave-daino: src/resnet50.py lines 351-368,
  daino/utils.py `MultiCropWrapper.forward` lines 538-557). Here views of one size need not be
  consecutive: labelled views may come before the unlabelled ones and still share their call.

  Returns:
    One output per view, in the order of `views`: the pytree of `head` (or `network`) with
    that view's B_v rows.
  """
  shapes = list(dict.fromkeys(v.shape[1:] for v in views))
  groups = [[i for i, v in enumerate(views) if v.shape[1:] == shape] for shape in shapes]
  outputs = [network(jnp.concatenate([views[i] for i in group])) for group in groups]
  if head is not None:
    outputs = [head(jax.tree.map(lambda *parts: jnp.concatenate(parts), *outputs))]
    groups = [[i for group in groups for i in group]]
  per_view = {}
  for group, output in zip(groups, outputs):
    starts = np.cumsum([0] + [views[i].shape[0] for i in group])
    for i, start in zip(group, starts):
      per_view[i] = _rows(output, int(start), int(start) + views[i].shape[0])
  return [per_view[i] for i in range(len(views))]


def _rows(tree: PyTree, start: int, stop: int) -> PyTree:
  return jax.tree.map(lambda x: x[start:stop], tree)


def prototype_outputs(
  model, views: Sequence[jax.Array], *, train: bool
) -> tuple[list[jax.Array], list[jax.Array]]:
  """(embeddings V x [B_v, D], scores V x [B_v, K]) of a `PrototypeModel`'s views, `by_size`:
  one backbone call per view size, the projector and prototypes once on all views."""

  def head(features):
    embeddings = model.embed_features(features, train=train)
    return embeddings, model.prototypes(embeddings)

  outputs = by_size(functools.partial(model.backbone, train=train), views, head)
  return [z for z, _ in outputs], [s for _, s in outputs]


def mix_labelled(
  key: jax.Array,
  views: list[jax.Array],
  targets: jax.Array,
  *,
  mixup_alpha: float,
  cutmix_alpha: float,
  mode: str,
) -> tuple[jax.Array, list[jax.Array]]:
  """(targets [B_l', K], views V_l x [B_l', ...]) of labelled views V_l x [B_l, h, w, C] and
  targets [B_l, K], each image mixed with its mirror in the batch by `mixup.mix` with one
  weight, or one box (CutMix: views of one size), for every view: with mode 'replace' the
  mixes replace the images (B_l' = B_l); with 'extend' they follow them (B_l' = 2 B_l), so
  the clean images stay in the loss (src/mixup.py of github.com/pietroastolfi/suave-daino,
  `CollateMixup`, lines 265-283; main_suave.py lines 325-337: `extend_batch`, prob 1).
  """
  weights, lam = mixup.pixel_weights(
    key, *views[0].shape[1:3], mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha
  )
  weights = weights if cutmix_alpha else lam  # Mixup only: one weight for views of any size.
  mixed_views = [mixup.mix(v, v, weights) for v in views]
  mixed_targets = mixup.mix_targets(targets, targets, lam)
  if mode == 'replace':
    return mixed_targets, mixed_views
  return (
    jnp.concatenate([targets, mixed_targets]),
    [jnp.concatenate([v, m]) for v, m in zip(views, mixed_views)],
  )


def labelled_inputs(
  batch: dict,
  key: jax.Array,
  *,
  num_classes: int,
  num_prototypes: int,
  label_smoothing: float,
  mixup_alpha: float,
  cutmix_alpha: float = 0.0,
  mixup_mode: str = 'replace',
):
  """(targets [B_l', K], the labelled views V_l x [B_l', ...]).

  Targets are the smoothed one-hot labels over the first C of K prototypes; with
  `mixup_alpha` or `cutmix_alpha` > 0, `mix_labelled` mixes them with the labelled views
  (B_l' = 2 B_l with `mixup_mode` 'extend', else B_l).
  """
  targets = losses.class_targets(
    batch['labelled']['labels'], num_classes, num_prototypes, label_smoothing
  )
  labelled_views = batch['labelled']['views']
  if mixup_alpha or cutmix_alpha:
    targets, labelled_views = mix_labelled(
      key,
      labelled_views,
      targets,
      mixup_alpha=mixup_alpha,
      cutmix_alpha=cutmix_alpha,
      mode=mixup_mode,
    )
  return targets, labelled_views


def student_outputs(model, batch: dict, key: jax.Array, **kwargs):
  """(targets [B_l', K], labelled, unlabelled) of a `PrototypeModel` student, where
  labelled = (embeddings V_l x [B_l', D], scores V_l x [B_l', K]) of the (mixed) labelled views
  of `labelled_inputs` and unlabelled = (V_u x [B_u, D], V_u x [B_u, K]).

  One joint pass over the labelled views, then the unlabelled ones (main_suave.py and
  main_daino.py of github.com/pietroastolfi/suave-daino: `model([lab_inputs] + inputs)`), by
  `prototype_outputs`: labelled and unlabelled views of one size share a backbone call and
  BatchNorm sees the whole batch, whatever the labelled views' number and size.
  """
  targets, labelled_views = labelled_inputs(batch, key, **kwargs)
  embeds, scores = prototype_outputs(
    model, [*labelled_views, *batch['unlabelled']['views']], train=True
  )
  num_labelled_views = len(labelled_views)
  return (
    targets,
    (embeds[:num_labelled_views], scores[:num_labelled_views]),
    (embeds[num_labelled_views:], scores[num_labelled_views:]),
  )
