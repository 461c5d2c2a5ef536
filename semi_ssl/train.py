"""The one train loop: mesh, state, jitted step, periodic eval and checkpoints, results.

    train_and_evaluate(config, workdir) -> results dict (also WORKDIR/results.json)

WORKDIR is a local path or a URL that every process shares (gs://BUCKET/run on a TPU pod).

The step is `(TrainState, batch) -> (TrainState, metrics)`, jitted once with the batch split
over the mesh's data axis and the state as `state_sharding` places it (replicated unless FSDP
or the method splits it); augmentation runs inside it, on device,
from a key derived from (seed, step), so a resumed run sees exactly the batches it would have.
Before the steps a method names (`Method.dataset_pass_steps`), a pass over every unlabelled
image in eval mode gives its method state new per-image content (`make_dataset_pass`), which is
checkpointed with the rest: a run resumed after a pass does not repeat it.

With `config.polyak_decay` the state also keeps a Polyak average (an EMA) of the parameters,
updated after every applied step, which every evaluation reads (`PolyakTrainState`).

A step whose loss or gradients, or the parameters, model or method state it produces, are
not finite changes nothing but the step counter; the run then stops naming that step
(`config.nonfinite='stop'`) or goes on (`'skip'`). On SIGTERM or Ctrl-C the run saves at the
next step boundary and raises `errors.Preempted` (`notices`).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from semi_ssl import checkpoint, config_base, evaluate, methods, metric_writer, notices, parallel
from semi_ssl import profiling, provenance, visuals, workdir_lease
from semi_ssl.errors import Preempted, UserError
from semi_ssl.data import augment, datasets, pipeline
from semi_ssl.methods import base
from semi_ssl.ops import ema

RESULTS_FILE = 'results.json'
SPLIT_FILE = 'split.json'
CONFIG_FILE = 'config.json'
RESOLVED_FILE = 'resolved.json'  # The config's epochs in steps, its learning rate at its batch.
EVAL_HISTORY_FILE = 'eval_history.jsonl'  # Every evaluation, one line per step.
CONFUSION_FILE = 'confusion_matrix.npy'  # The test confusion matrix of many classes.
MAX_INLINE_CLASSES = 100  # Up to this many classes, the matrix is in results.json.
SUMMARY_FILE = 'summary.json'  # Devices, mesh, batches, parameters, provenance (`provenance`).


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates done
  params: nnx.State  # trained by gradients
  model_state: nnx.State  # everything else in the model (BatchNorm statistics)
  opt_state: optax.OptState
  method_state: Any  # EMA teachers, queues, ... (see Method.init_state)
  key: jax.Array  # uint32 [2] base PRNG key; the key of step s is fold_in(key, s)
  skipped_steps: jax.Array  # int32 scalar: steps not applied because of a non-finite value
  first_skipped: jax.Array  # int32 scalar: the first of them (1-based like the logs), or 0


@flax.struct.dataclass
class PolyakTrainState(TrainState):
  """A TrainState with the Polyak average of its parameters (`config.polyak_decay` set): after
  each applied step, average <- decay * average + (1 - decay) * params, from the initial
  parameters, as S4L's tf.train.ExponentialMovingAverage of the trainable variables (a Variable's
  average starts at its value; zero_debias applies to tensors only). BatchNorm statistics are
  not averaged: evaluation reads the live ones with the averaged weights, as S4L's
  `eval_ema_scope` (trainer.py lines 132-165) swaps the trainable variables only. A dataset
  pass, part of training, reads the parameters. Without averaging the state is a plain
  TrainState, so checkpoints keep their structure."""

  polyak_params: nnx.State  # shaped like `params`


def evaluated_params(state: TrainState) -> nnx.State:
  """The parameters every evaluation reads: the Polyak average, when the state keeps one."""
  return state.polyak_params if isinstance(state, PolyakTrainState) else state.params


def create_optimizer(config: ml_collections.ConfigDict, num_steps: int):
  """Optax optimiser with linear warm-up, then cosine decay or a piecewise-constant schedule
  (`config.optimizer.schedule`); (transform, schedule)."""
  opt = config.optimizer
  if opt.schedule == 'piecewise':
    config_base.check_decay_boundaries(opt, num_steps, opt.warmup_steps)
    schedule = piecewise_schedule(
      opt.learning_rate,
      opt.warmup_steps,
      [round(fraction * num_steps) for fraction in opt.decay_boundaries],
      opt.decay_factor,
    )
  else:
    schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=opt.learning_rate,
      warmup_steps=opt.warmup_steps,
      decay_steps=max(num_steps, opt.warmup_steps + 1),
      end_value=opt.learning_rate * opt.end_learning_rate_factor,
    )
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # No biases, no norms.
  if opt.name == 'sgd':
    tx = optax.chain(
      optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
      optax.sgd(schedule, momentum=opt.momentum, nesterov=opt.nesterov),
    )
  elif opt.name == 'lars':
    tx = optax.lars(
      schedule,
      weight_decay=opt.weight_decay,
      weight_decay_mask=decay_mask,
      trust_coefficient=opt.trust_coefficient,
      trust_ratio_mask=decay_mask,
      momentum=opt.momentum,
      nesterov=opt.nesterov,
    )
  else:
    tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask)
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, schedule


def piecewise_schedule(peak: float, warmup_steps: int, boundaries: list[int], factor: float):
  """Learning rate of step s (updates done): peak * s / warmup_steps during the warm-up, then
  peak * factor ** (number of `boundaries` < s), as S4L's `get_lr` (trainer.py lines 34-54;
  tf.train.piecewise_constant moves to the next value once the step exceeds a boundary)."""
  bounds = jnp.asarray(boundaries, jnp.int32)

  def schedule(step):
    decays = jnp.sum(step > bounds)
    warming = peak * step / max(warmup_steps, 1)
    return jnp.where(step < warmup_steps, warming, peak * factor**decays)

  return schedule


def create_method(
  config: ml_collections.ConfigDict, splits: datasets.DatasetSplits, mesh: Mesh
) -> base.Method:
  """The method of `config.method` on the run's mesh."""
  return methods.REGISTRY[config.method](config, data_info(splits), mesh)


def data_info(splits: datasets.DatasetSplits) -> base.DataInfo:
  """What a method is told of the data: classes, image shape, unlabelled and labelled counts."""
  return base.DataInfo(
    num_classes=splits.num_classes,
    image_shape=tuple(splits.image_shape),
    num_unlabelled=len(splits.unlabelled_images),
    labelled_counts=tuple(
      np.bincount(splits.labelled_labels, minlength=splits.num_classes).tolist()
    ),
  )


def state_sharding(method: base.Method, abstract_state: TrainState) -> TrainState:
  """NamedShardings on the method's mesh shaped like `abstract_state`: the generic rule
  (`parallel.state_sharding`), and the method's own for its method state."""
  return parallel.state_sharding(abstract_state, method.mesh).replace(
    method_state=method.state_sharding(abstract_state.method_state)
  )


def state_initializer(method: base.Method, tx, seed: int, *, polyak: bool = False):
  """(graphdef, init) where `init()` builds a fresh TrainState (jit it, or eval_shape it); with
  `polyak`, a PolyakTrainState whose average starts at the initial parameters."""
  create = lambda: method.create_model(nnx.Rngs(seed))
  graphdef = nnx.graphdef(nnx.eval_shape(create))

  def init():
    params, model_state = nnx.split(create(), nnx.Param, ...)[1:]
    params = method.project_params(params)
    zero = jnp.zeros((), jnp.int32)
    state = TrainState(
      step=zero,
      params=params,
      model_state=model_state,
      opt_state=tx.init(params),
      method_state=method.init_state(params),
      key=jax.random.PRNGKey(seed),
      skipped_steps=zero,
      first_skipped=zero,
    )
    return PolyakTrainState(**vars(state), polyak_params=params) if polyak else state

  return graphdef, init


def init_state(method: base.Method, tx, seed: int, sharding=None):
  """(graphdef, TrainState) with freshly initialised parameters, built by one jitted call."""
  graphdef, init = state_initializer(method, tx, seed)
  return graphdef, jax.jit(init, out_shardings=sharding)()


def step_builders(config: ml_collections.ConfigDict, method: base.Method, augment_cfg):
  """(graphdef, init, step) of `config`'s training of `method`: `state_initializer`'s graphdef
  and init, and `train_step` with all but the state and the batch bound (not jitted)."""
  tx, schedule = create_optimizer(config, config.num_steps)
  graphdef, init = state_initializer(method, tx, config.seed, polyak=bool(config.polyak_decay))
  step = functools.partial(
    train_step,
    method=method,
    graphdef=graphdef,
    tx=tx,
    augment_cfg=augment_cfg,
    schedule=schedule,
    polyak_decay=config.polyak_decay,
    accumulate_steps=config.accumulate_steps,
  )
  return graphdef, init, step


def initialise_from(
  state: TrainState, source: dict, paths: tuple[str, ...], method: base.Method, sharding: TrainState
) -> TrainState:
  """`state` with the parameters and model state (BatchNorm statistics) under `paths` taken
  from `source` (`checkpoint.load_variables`), then `method.project_params`, and the method
  state (EMA teachers, queues) and a Polyak average built anew from the new parameters, as a
  fresh run builds them."""
  params = jax.jit(method.project_params, out_shardings=sharding.params)(
    checkpoint.copy_subtrees(state.params, source['params'], paths)
  )
  model_state = checkpoint.copy_subtrees(
    state.model_state, source['model_state'], paths, each_prefix_matches=False
  )
  method_state = jax.jit(method.init_state, out_shardings=sharding.method_state)(params)
  polyak = {'polyak_params': params} if isinstance(state, PolyakTrainState) else {}
  return state.replace(params=params, model_state=model_state, method_state=method_state, **polyak)


def train_step(
  state: TrainState,
  batch: dict,
  *,
  method: base.Method,
  graphdef,
  tx,
  augment_cfg: augment.AugmentConfig,
  schedule,
  polyak_decay: float | None = None,
  accumulate_steps: int = 1,
) -> tuple[TrainState, dict]:
  """One optimiser update on a global batch of uint8 images, its gradient the mean over
  `accumulate_steps` micro-batches (`accumulated_value_and_grad`), each augmenting its own
  images into views with their rows of the batch's view keys (`augment.view_keys`: the views
  do not depend on the micro-batching); with `polyak_decay` (the state a PolyakTrainState), the
  Polyak average's update after it."""
  key = jax.random.fold_in(state.key, state.step)
  labelled_key, unlabelled_key, loss_key = jax.random.split(key, 3)
  configs = {'labelled': augment_cfg.labelled_views, 'unlabelled': augment_cfg}
  keys = {'labelled': labelled_key, 'unlabelled': unlabelled_key}
  batch = {
    name: {**part, 'view_keys': augment.view_keys(keys[name], len(part['images']), configs[name])}
    for name, part in batch.items()
  }

  def loss_fn(params, states, batch, key):
    views = {
      name: {
        'views': augment.views_from_keys(part['view_keys'], part['images'], configs[name]),
        **{k: v for k, v in part.items() if k not in ('images', 'view_keys')},
      }
      for name, part in batch.items()
    }
    model = nnx.merge(graphdef, params, states[0], copy=True)
    loss, (method_state, metrics) = method.loss(model, states[1], views, key, state.step)
    return loss, ((nnx.state(model, nnx.Not(nnx.Param)), method_state), metrics)

  loss, ((model_state, method_state), metrics), grads = accumulated_value_and_grad(
    loss_fn,
    state.params,
    (state.model_state, state.method_state),
    batch,
    loss_key,
    accumulate_steps,
    method.mesh,
  )
  trainable = method.trainable(state.params, state.step)
  if trainable is not None:
    grads = _masked(grads, trainable)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  if trainable is not None:
    updates = _masked(updates, trainable)
    opt_state = keep_frozen_state(opt_state, state.opt_state, trainable)
  params = method.project_params(optax.apply_updates(state.params, updates))
  method_state = method.update_state(params, method_state, state.step)
  grad_norm = optax.global_norm(grads)
  metrics = {**metrics, 'loss': loss, 'learning_rate': schedule(state.step), 'grad_norm': grad_norm}
  # A non-finite loss, gradient or result leaves everything but the step counter as it was.
  finite = (
    jnp.isfinite(loss)
    & jnp.isfinite(grad_norm)
    & all_finite(params)
    & all_finite(model_state)
    & all_finite(method_state)
  )
  updated = jax.tree.map(
    lambda new, old: jnp.where(finite, new, old),
    (params, model_state, opt_state, method_state),
    (state.params, state.model_state, state.opt_state, state.method_state),
  )
  polyak = {}
  if polyak_decay:  # Moved by an applied step only: a skipped one leaves it as it was.
    average = ema.ema(state.polyak_params, params, polyak_decay)
    polyak['polyak_params'] = jax.tree.map(
      lambda new, old: jnp.where(finite, new, old), average, state.polyak_params
    )
  first_skipped = jnp.where(finite | (state.first_skipped > 0), state.first_skipped, state.step + 1)
  return state.replace(
    step=state.step + 1,
    params=updated[0],
    model_state=updated[1],
    opt_state=updated[2],
    method_state=updated[3],
    skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
    first_skipped=first_skipped,
    **polyak,
  ), metrics


def accumulated_value_and_grad(loss_fn, params, carry, batch, key, num: int, mesh: Mesh):
  """(loss, (carry, metrics), gradients w.r.t. `params`) of `loss_fn(params, carry, batch,
  key) -> (loss, (carry, metrics))`, the loss, metrics and gradients the means over `num`
  equal micro-batches of `batch` (`micro_batches`), scanned: one compiled pass of the model,
  holding one micro-batch's activations at a time. Micro-batch i gets fold_in(key, i); the
  carry (BatchNorm statistics, method state) goes through them in order, as through `num`
  smaller steps: each updates it with its own rows (queues receive all of the batch's rows,
  but an EMA updated in the loss, e.g. Daino's center, moves `num` times). num=1: the plain
  value and gradient of `batch` with `key`."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if num == 1:
    (loss, aux), grads = grad_fn(params, carry, batch, key)
    return loss, aux, grads

  def accumulate(totals, micro):
    carry, grad_sum = totals
    (loss, (carry, metrics)), grads = grad_fn(params, carry, *micro)
    return (carry, jax.tree.map(jnp.add, grad_sum, grads)), (loss, metrics)

  keys = jax.vmap(functools.partial(jax.random.fold_in, key))(jnp.arange(num))
  (carry, grad_sum), (losses, metrics) = jax.lax.scan(
    accumulate,
    (carry, jax.tree.map(jnp.zeros_like, params)),
    (micro_batches(batch, num, mesh), keys),
  )
  mean = lambda x: jnp.mean(x, axis=0)
  return (
    mean(losses),
    (carry, jax.tree.map(mean, metrics)),
    jax.tree.map(lambda g: g / num, grad_sum),
  )


def micro_batches(batch, num: int, mesh: Mesh):
  """Leaves [B, ...] split over the devices of `mesh` -> [num, B / num, ...] split along axis 1:
  micro-batch i holds rows i, num + i, 2 num + i, ... With B / devices a multiple of `num`
  (`config_base.check_batches`), each device keeps its own rows (a reshape to
  [B / num, num, ...] and a swap, no communication), every micro-batch spread over all of
  them."""

  def split(x):
    x = x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, parallel.batch_sharding(mesh, axis=1))

  return jax.tree.map(split, batch)


def make_dataset_pass(
  method: base.Method,
  graphdef,
  images,
  mesh: Mesh,
  *,
  preprocess,
  batch_size: int,
  method_state_sharding,
):
  """`run(state) -> state` with the method state `method.absorb_dataset_pass` makes of
  `method.dataset_pass_outputs` over every image of `images` (uint8 [N, H, W, C], read as the
  evaluator reads the test set: `preprocess`, batches of `batch_size` split over the mesh, the
  last padded, each process its rows). Batch i's outputs are written into row i of arrays
  [batches, batch_size, ...] whose batch axis is split over the mesh as the batch is, so each
  device writes its own rows and no write communicates (a write that moved rows between
  devices gathered them, a collective per batch); they are handed over as [N, ...] in index
  order, split over the mesh."""
  num = len(images)
  num_batches = -(-num // batch_size)
  rows = parallel.batch_sharding(mesh)
  batch_rows = parallel.batch_sharding(mesh, axis=1)

  def outputs(state, images):
    model = nnx.merge(graphdef, state.params, state.model_state)
    return method.dataset_pass_outputs(model, state.method_state, preprocess(images))

  @functools.partial(jax.jit, out_shardings=batch_rows, donate_argnums=1)
  def write(state, buffer, images, index):
    return jax.tree.map(lambda b, o: b.at[index].set(o), buffer, outputs(state, images))

  @functools.partial(jax.jit, out_shardings=method_state_sharding)
  def absorb(state, buffer):
    stacked = jax.tree.map(
      lambda b: jax.lax.with_sharding_constraint(b.reshape(-1, *b.shape[2:])[:num], rows), buffer
    )
    model = nnx.merge(graphdef, state.params, state.model_state)
    return method.absorb_dataset_pass(model, state.method_state, stacked, state.step)

  def run(state):
    batch_like = jax.ShapeDtypeStruct((batch_size, *images.shape[1:]), jnp.uint8)
    buffer = jax.jit(
      lambda: jax.tree.map(
        lambda x: jnp.zeros((num_batches, *x.shape), x.dtype),
        jax.eval_shape(outputs, state, batch_like),
      ),
      out_shardings=batch_rows,
    )()
    batches = evaluate.sharded_batches(dict(images=images), batch_size, mesh)
    for index, batch in enumerate(batches):
      buffer = write(state, buffer, batch['images'], index)
    return state.replace(method_state=absorb(state, buffer))

  return run


def all_finite(tree) -> jax.Array:
  """Bool scalar: every element of every floating leaf of `tree` is finite."""
  leaves = [
    jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.stack(leaves).all() if leaves else jnp.array(True)


def _masked(tree, mask):
  return jax.tree.map(lambda x, keep: jnp.where(keep, x, jnp.zeros_like(x)), tree, mask)


def keep_frozen_state(new_opt_state, old_opt_state, trainable):
  """`new_opt_state` but, in each subtree shaped like the parameters (momentum, Adam's
  moments), the `old_opt_state` leaves of the parameters that `trainable` (bool scalars shaped
  like the parameters) freezes: a frozen parameter's state stays as it was, as PyTorch's
  `grad = None` leaves it; shared counters (the step count) advance."""
  structure = jax.tree.structure(trainable)
  shaped_like_params = lambda x: jax.tree.structure(x) == structure

  def select(new, old):
    if not shaped_like_params(new):
      return new
    return jax.tree.map(lambda keep, n, o: jnp.where(keep, n, o), trainable, new, old)

  return jax.tree.map(select, new_opt_state, old_opt_state, is_leaf=shaped_like_params)


def _write_json(path: epath.Path, data: dict) -> None:
  metric_writer.write_atomically(path, json.dumps(data, indent=2))


def append_evaluation(path: epath.Path, step: int, figures: dict) -> None:
  """Adds {'step': step, **figures} to the JSON lines of `path`, one line per step in ascending
  order: an evaluation of a step already there (a resumed run evaluating again a step it had
  evaluated before it stopped) replaces its line. Rewritten atomically, as a bucket cannot
  append."""
  records = metric_writer.read_step_lines(path)
  records[step] = {'step': step, **figures}
  metric_writer.write_atomically(path, metric_writer.step_lines(records))


def per_class_results(confusion: np.ndarray, workdir: epath.Path, is_writer: bool) -> dict:
  """test_per_class_top1 ([C] floats, None for a class without test images) and the confusion
  matrix (rows true classes, columns predicted): as [C, C] lists up to MAX_INLINE_CLASSES
  classes, else saved as WORKDIR/CONFUSION_FILE (by the writing process), named here."""
  matrix = confusion.tolist()
  if len(confusion) > MAX_INLINE_CLASSES:
    if is_writer:
      with (workdir / CONFUSION_FILE).open('wb') as f:
        np.save(f, confusion)
    matrix = CONFUSION_FILE
  return {
    'test_per_class_top1': evaluate.per_class_accuracy(confusion),
    'test_confusion_matrix': matrix,
  }


def _check_finite(
  state: TrainState, nonfinite: str, ckpt: checkpoint.Checkpointer, reported: int
) -> int:
  """Stops the run (nonfinite='stop') or warns ('skip') on new non-finite steps; their count."""
  skipped = int(state.skipped_steps)
  if skipped and nonfinite == 'stop':
    ckpt.wait()
    last_good = (
      f'Last good checkpoint: step {ckpt.last_complete_step} in {ckpt.directory}.'
      if ckpt.last_complete_step is not None
      else 'No checkpoint was written yet; a rerun with a lower learning rate starts over.'
    )
    raise UserError(
      f'The loss, the gradients or the parameters or state they produce were not finite at step '
      f'{int(state.first_skipped)}; no parameter was updated from it. {last_good} Lower the '
      'learning rate, or set --config.nonfinite=skip to skip such steps.'
    )
  if skipped > reported:
    logging.warning(
      'Skipped %d steps with a non-finite loss, gradients or result so far (first: step %d).',
      skipped,
      int(state.first_skipped),
    )
  return skipped


def check_unchanged(
  workdir: str | os.PathLike,
  filename: str,
  current: dict,
  ignore=(),
  fix: str = '',
  defaults: dict | None = None,
) -> None:
  """Raises UserError when `current` differs from WORKDIR/`filename`, the record written when
  the run there started, in a key not in `ignore`. For a run that continues (a checkpoint or
  results.json in `workdir`), so that it never goes on under settings it did not start with."""
  path = epath.Path(workdir) / filename
  if not path.exists():
    logging.warning(
      '%s is missing: cannot check that this run continues under the settings it started with.',
      path,
    )
    return
  saved = json.loads(path.read_text())
  current = json.loads(json.dumps(current))  # Tuples become lists, as in the saved file.
  changed = config_base.changed_keys(saved, current, ignore, defaults)
  if changed:
    raise UserError(
      f'{workdir} holds a run that started with other settings ({path}): '
      f'{config_base.describe_changes(saved, current, changed)}. '
      f'{fix or "Use a new --workdir, or rerun with the original value."}'
    )


def check_config_unchanged(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
  """`check_unchanged` of the config, but for the keys a resumed run may change, and for keys
  added since the run started (to `get_base_config`, or `config_base.ADDED_METHOD_KEYS`) that
  are at their defaults."""
  base = json.loads(config_base.get_base_config().to_json_best_effort())
  check_unchanged(
    workdir,
    CONFIG_FILE,
    json.loads(config.to_json_best_effort()),
    config_base.RESUME_MAY_CHANGE,
    defaults={**base, **config_base.ADDED_METHOD_KEYS},
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the results.

  A resumed run must have the config (but `config_base.RESUME_MAY_CHANGE`) and the data split
  it started with, or raises UserError before anything is restored.

  Raises errors.Preempted after saving, when a preemption notice arrives.
  """
  start_time = time.time()
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_writer = jax.process_index() == 0
  # A run that continues keeps the records of its start, and the settings they name.
  resuming = checkpoint.has_checkpoint(workdir)
  if resuming:
    check_config_unchanged(config, workdir)
  mesh = parallel.create_mesh(config.mesh.model)
  splits = datasets.load(config)
  augment_cfg = augment.augment_config_from(config, splits.mean, splits.std, splits.image_shape)
  if resuming:
    check_unchanged(
      workdir,
      SPLIT_FILE,
      splits.split_info,
      fix=(
        'The data is not the data the run started with (another --config.data_dir, or changed '
        'files): point the config at that data, or use a new --workdir.'
      ),
    )
  elif is_writer:
    _write_json(workdir / SPLIT_FILE, splits.split_info)
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
  # Epochs to steps and the base learning rate to the batch's, now that the data's size is known.
  num_examples = dict(
    unlabelled=len(splits.unlabelled_images), labelled=len(splits.labelled_labels)
  )
  resolved = config_base.resolution(config, num_examples)
  logging.info('Resolved: %s', ', '.join(f'{key} {value}' for key, value in resolved.items()))
  if resuming:
    check_unchanged(workdir, RESOLVED_FILE, resolved)
  elif is_writer:
    _write_json(workdir / RESOLVED_FILE, resolved)
  config = config_base.resolve(config, num_examples)

  method = create_method(config, splits, mesh)
  replicated = parallel.replicated(mesh)
  graphdef, init, step = step_builders(config, method, augment_cfg)
  abstract = jax.eval_shape(init)
  sharding = state_sharding(method, abstract)
  record = provenance.provenance()
  if is_writer:
    summary = provenance.run_summary(
      mesh,
      batch_sizes=dict(
        labelled=config.labelled_batch_size,
        unlabelled=config.batch_size if method.uses_unlabelled else None,
      ),
      params=abstract.params,
      resolved=resolved,
      record=record,
    )
    _write_json(workdir / SUMMARY_FILE, summary)
    logging.info('Run summary (%s):\n%s', workdir / SUMMARY_FILE, json.dumps(summary, indent=2))
  abstract = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, sharding
  )

  # Everything that can fail on bad input (checkpoints, init_from) before anything compiles.
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  restored = ckpt.restore_latest(abstract)
  previous_seconds = 0.0
  if restored is not None:
    state, record = restored
    previous_seconds = record['wall_seconds']
    logging.info('Resumed from %s at step %d.', ckpt.directory, int(state.step))
  else:
    source = checkpoint.load_variables(config.init_from.workdir) if config.init_from.paths else None
    state = jax.jit(init, out_shardings=sharding)()
    if source is not None:
      state = initialise_from(state, source, tuple(config.init_from.paths), method, sharding)
      logging.info(
        'Initialised %s from %s.', list(config.init_from.paths), config.init_from.workdir
      )
    state = state.replace(method_state=method.load_state(state.method_state))
  start_step = int(state.step)
  reported_skips = int(state.skipped_steps)

  step_fn = jax.jit(step, out_shardings=(sharding, replicated), donate_argnums=0)

  def apply_fn(variables, images):
    params, model_state, method_state = variables
    model = nnx.merge(graphdef, params, model_state)
    return (
      method.predict(model, images) if method.has_classifier else None,
      method.features(model, images),
      method.eval_predictions(model, method_state, images),
    )

  preprocess = lambda x: augment.eval_view(
    x, config.augment.global_size, splits.mean, splits.std, config.eval.crop_fraction
  )
  evaluator = evaluate.make_evaluator(
    apply_fn,
    splits,
    mesh,
    preprocess=preprocess,
    batch_size=config.eval.batch_size,
    knn_k=config.eval.knn_k,
    knn_temperature=config.eval.knn_temperature,
    variables_like=(abstract.params, abstract.model_state, abstract.method_state),
  )

  def run_eval(state):
    """(figures, confusion matrix [C, C]): the model's figures (its Polyak average's, when
    kept), then as `<name>_<figure>` those of `method.eval_params`; the model's test confusion
    matrix."""
    evaluated = evaluated_params(state)
    figures = evaluator((evaluated, state.model_state, state.method_state))
    confusion = figures.pop('test_confusion_matrix')
    for name, params in method.eval_params(evaluated, state.method_state).items():
      further = evaluator((params, state.model_state, state.method_state))
      del further['test_confusion_matrix']
      figures.update({f'{name}_{key.removeprefix("test_")}': v for key, v in further.items()})
    return figures, confusion

  pass_steps = set(method.dataset_pass_steps())
  dataset_pass = make_dataset_pass(
    method,
    graphdef,
    splits.unlabelled_images,
    mesh,
    preprocess=preprocess,
    batch_size=config.eval.batch_size,
    method_state_sharding=sharding.method_state,
  )

  def save(state):
    workdir_lease.check_held()  # Another run took the workdir over: stop before writing.
    ckpt.save(int(state.step), state, {'wall_seconds': previous_seconds + time.time() - start_time})

  writer = metric_writer.RunWriter(workdir, enabled=is_writer, start_step=start_step)
  if start_step == 0:
    writer.hparams(config)

  def record_evaluation(step, figures):
    writer.evaluation(step, figures)
    if is_writer:
      append_evaluation(workdir / EVAL_HISTORY_FILE, step, figures)

  images_per_step = config.labelled_batch_size + (
    config.batch_size if method.uses_unlabelled else 0
  )
  progress = metric_writer.Progress(config.num_steps, start_step, images_per_step)
  interval = metric_writer.IntervalMean()
  batches = pipeline.iterate(
    splits,
    mesh,
    start_step=start_step,
    num_steps=config.num_steps,
    seed=config.seed,
    labelled_batch_size=config.labelled_batch_size,
    batch_size=config.batch_size if method.uses_unlabelled else None,
  )
  preemption = notices.watch(ckpt.directory)
  profiler = profiling.StepProfiler(tuple(config.profile_steps), workdir)
  try:
    if preemption.stops_before_training():  # It came while the run was starting.
      raise Preempted(
        f'{preemption.name} while starting: stopped at step {start_step} of '
        f'{config.num_steps}, with nothing new to save; run the same command to '
        'resume.'
      )
    for step, batch in zip(range(start_step + 1, config.num_steps + 1), batches):
      if step - 1 in pass_steps:  # The state's step: before that step's update.
        pass_start = time.time()
        with progress.paused():
          state = jax.block_until_ready(dataset_pass(state))
        logging.info(
          'Dataset pass before step %d: %d unlabelled images in %.1f s.',
          step - 1,
          len(splits.unlabelled_images),
          time.time() - pass_start,
        )
      profiler.before(step)
      state, metrics = step_fn(state, batch)
      profiler.after(step, state)
      interval.add(metrics)
      if step == start_step + 1:  # Compiled: out of the speed, as the views' grid.
        if start_step == 0:
          writer.images(0, visuals.augmentation_grids(state.key, batch, augment_cfg, mesh))
        jax.block_until_ready(metrics)
        logging.info('First step, compilation included: %.1f s.', progress.restart(step))
      preempted = preemption.reached(step)
      checkpoint_due = step % config.checkpoint_every == 0 or step == config.num_steps
      if step % config.log_every == 0 or checkpoint_due or preempted:
        reported_skips = _check_finite(state, config.nonfinite, ckpt, reported_skips)
      if step % config.log_every == 0 or step == config.num_steps:
        means = interval.mean()
        writer.train(step, {**means, **progress.update(step)})
        logging.info('%s | loss %.4f', progress.line(step), means['loss'])
      if step % config.eval_every == 0 and step != config.num_steps and not preempted:
        with progress.paused():
          eval_metrics, _ = run_eval(state)
          record_evaluation(step, eval_metrics)
        logging.info(
          'step %d eval | %s', step, ' | '.join(f'{k} {v:.4f}' for k, v in eval_metrics.items())
        )
      if checkpoint_due or preempted:
        save(state)
      if preempted:
        ckpt.wait()
        raise Preempted(
          f'{preemption.name}: stopped at step {step} of {config.num_steps} and '
          f'saved {ckpt.directory}/{step}; run the same command to resume.'
        )

    # The reported figures are the final model's, never the best periodic evaluation.
    final, confusion = run_eval(state)
    record_evaluation(config.num_steps, final)
    if len(confusion) <= MAX_INLINE_CLASSES:
      writer.images(
        config.num_steps, {'eval/test_confusion_matrix': visuals.confusion_image(confusion)}
      )
    ckpt.wait()
  finally:
    profiler.close()
    preemption.close()
    writer.close()
    ckpt.close()
  results = {
    'method': config.method,
    'dataset': config.dataset,
    'labels_per_class': config.labels_per_class,
    'label_fraction': config.label_fraction,
    'seed': config.seed,
    'steps': int(state.step),
    **final,
    **per_class_results(confusion, workdir, is_writer),
    'resolved': resolved,
    'skipped_steps': int(state.skipped_steps),
    'wall_seconds': round(previous_seconds + time.time() - start_time, 1),
    'provenance': record,
  }
  if is_writer:
    _write_json(workdir / RESULTS_FILE, results)
  return results


def read_results(path: str | os.PathLike) -> dict:
  return json.loads(epath.Path(path).read_text())
