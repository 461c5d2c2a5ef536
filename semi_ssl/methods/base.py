"""The interface every method implements to plug into the shared trainer.

The trainer owns everything that is the same for all methods: data, multi-crop views, the
mesh, the optimiser, checkpoints, evaluation and logging. A method owns its model, its loss
and any state that is not trained by gradients (EMA teachers, queues). The trainer creates
the run's one mesh and hands it to the method's constructor; a method never creates one.

`batch` as a method sees it (global arrays, batch axis sharded over the mesh's data axis):

    {'labelled':   {'views': [V_l x float32 [B_l, h, w, C]], 'labels': int32 [B_l]},
     'unlabelled': {'views': [V_u x float32 [B_u, h, w, C]], 'indices': int32 [B_u]}}

Unlabelled views are the global crops first, then the local crops (`config.augment`).
Labelled views are the same by default; with `config.augment.labelled` set, they are its
`num_crops` crops of its `size` instead, so V_l, and h and w, may differ from the unlabelled
ones. Views of one size go through a network in one call (`methods/views.py`, `by_size`).
`unlabelled` is absent for methods with `uses_unlabelled = False`; unlabelled images never
come with labels; `indices` are the images' rows in the unlabelled set (for per-image state
such as pseudo-labels, see `dataset_pass_steps`).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from semi_ssl import parallel

PyTree = Any
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What a method may know about its data: never the unlabelled labels."""

  num_classes: int
  image_shape: tuple[int, int, int]
  num_unlabelled: int = 0  # N: the unlabelled images, for per-image method state.
  labelled_counts: tuple[int, ...] = ()  # The labelled images of each class [C] (empty: unknown).


class Method(abc.ABC):
  """A semi-supervised method: a model, a loss and (optionally) non-gradient state."""

  uses_unlabelled: bool = True
  # False for a method with no class logits (a self-supervised pretraining stage): `predict` is
  # never called, and the evaluation reports the kNN probe and `eval_predictions` only, no
  # test_top1/test_top5. An instance may set its own in __init__ (e.g. from its config's stage).
  has_classifier: bool = True

  def __init__(self, config: ml_collections.ConfigDict, data: DataInfo, mesh: Mesh):
    self.config = config
    self.data = data
    self.mesh = mesh  # The trainer's: the batch is split over it, the train state stored on it.

  @abc.abstractmethod
  def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
    """Every trainable part of the method (backbone and heads) as one NNX module."""

  def init_state(self, params: nnx.State) -> PyTree:
    """State outside the gradient (EMA teachers, queues), from the initial parameters."""
    del params
    return {}

  def load_state(self, state: PyTree) -> PyTree:
    """The method state of a fresh run, once built (and `init_from` applied), with what it
    reads from disk (e.g. a frozen teacher's checkpoint); not called on resume. Default: as is."""
    return state

  def state_sharding(self, abstract_state: PyTree) -> PyTree:
    """NamedShardings on `self.mesh` shaped like `abstract_state` (the method state as
    ShapeDtypeStructs), where the trainer stores, checkpoints and restores it.

    Default: the trainer's rule for the whole train state (`parallel.state_sharding`).
    Override to split e.g. a queue's rows over the devices.
    """
    return parallel.state_sharding(abstract_state, self.mesh)

  @abc.abstractmethod
  def loss(
    self, model: nnx.Module, state: PyTree, batch: dict, key: jax.Array, step: jax.Array
  ) -> tuple[jax.Array, tuple[PyTree, Metrics]]:
    """Scalar loss to minimise, with the new method state and scalar metrics."""

  def trainable(self, params: nnx.State, step: jax.Array) -> PyTree | None:
    """Bool scalars shaped like `params`: which parameters this step updates (None: all).

    A frozen parameter gets neither gradient nor weight decay nor momentum that step, and its
    optimiser state (momentum, Adam's moments) stays as it was (`train.keep_frozen_state`).
    """
    del params, step
    return None

  def project_params(self, params: nnx.State) -> nnx.State:
    """The parameters moved onto the method's constraint set (e.g. unit-norm prototypes),
    applied to the initial parameters and after each optimiser update, before `update_state`.

    Default: unconstrained (the identity).
    """
    return params

  def update_state(self, params: nnx.State, state: PyTree, step: jax.Array) -> PyTree:
    """Called after each optimiser update with the new parameters (e.g. EMA teachers)."""
    del params, step
    return state

  def dataset_pass_steps(self) -> tuple[int, ...]:
    """The steps before which the trainer passes over the whole unlabelled set (0: before the
    first): when the state's step equals one of them, before that step's update, so a run
    resumed after a pass does not repeat it. Default: none."""
    return ()

  def dataset_pass_outputs(self, model: nnx.Module, state: PyTree, images: jax.Array) -> PyTree:
    """Per-image outputs (leaves [B, ...]) of a batch of normalised unlabelled images
    [B, H, W, C], eval view, in eval mode (e.g. a frozen teacher's argmax [B]); jitted by the
    trainer, the batch split over the mesh. Default: none."""
    del model, state, images
    return {}

  def absorb_dataset_pass(
    self, model: nnx.Module, state: PyTree, outputs: PyTree, step: jax.Array
  ) -> PyTree:
    """The new method state from `dataset_pass_outputs` over all N unlabelled images (leaves
    [N, ...], rows in unlabelled-index order, split over the mesh's data axis) at `step`, given
    the model the pass ran with in eval mode (e.g. to apply heads to stored features one at a
    time); jitted by the trainer, and checkpointed with the rest of the state. Default:
    unchanged."""
    del model, outputs, step
    return state

  @abc.abstractmethod
  def predict(self, model: nnx.Module, images: jax.Array) -> jax.Array:
    """Class logits [B, num_classes] of normalised eval images [B, H, W, C].

    Never called when `has_classifier` is False (such a method may raise here)."""

  def features(self, model: nnx.Module, images: jax.Array) -> jax.Array:
    """Backbone features [B, D] of normalised eval images, for the kNN probe.

    Default: `model.backbone`'s, in eval mode.
    """
    return model.backbone(images, train=False)

  def eval_predictions(
    self, model: nnx.Module, state: PyTree, images: jax.Array
  ) -> dict[str, jax.Array]:
    """Further class predictions {name: int32 [B]} of normalised eval images, each reported
    as `<name>_top1` on the test set (e.g. SemPPL's kNN pseudo-labels)."""
    del model, state, images
    return {}

  def eval_params(self, params: nnx.State, state: PyTree) -> dict[str, nnx.State]:
    """Further parameters {name: params shaped like `params`} (e.g. an EMA teacher's) to
    evaluate as the model's own, with its other state (BatchNorm statistics): each figure
    `test_<f>` or `<f>` of the model is reported for them as `<name>_<f>`."""
    del params, state
    return {}


def create_backbone(
  config: ml_collections.ConfigDict, data: DataInfo, rngs: nnx.Rngs
) -> nnx.Module:
  """The ResNet named by `config.model`, for images of `data.image_shape`."""
  from semi_ssl.models import resnet

  return resnet.create_backbone(
    config.model.backbone,
    width=config.model.width,
    stem=config.model.stem,
    num_channels=data.image_shape[-1],
    rngs=rngs,
    dtype=jax.numpy.dtype(config.model.dtype),
    remat=config.model.get('remat', False),  # A frozen teacher's model has none: no backward.
  )
