"""The one train loop: mesh, state, jitted step, periodic eval and checkpoints, results.

    train_and_evaluate(config, workdir) -> results dict (also WORKDIR/results.json)

The step is `(TrainState, batch) -> (TrainState, metrics)`, jitted once with the batch split
over the mesh's data axis and the state replicated; augmentation runs inside it, on device,
from a key derived from (seed, step), so a resumed run sees exactly the batches it would have.
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
import optax
from absl import logging
from flax import nnx

from semi_ssl import checkpoint, evaluate, methods, metric_writer, parallel
from semi_ssl.data import augment, datasets, pipeline
from semi_ssl.methods import base

RESULTS_FILE = 'results.json'
SPLIT_FILE = 'split.json'


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32 scalar: number of updates done
  params: nnx.State          # trained by gradients
  model_state: nnx.State     # everything else in the model (BatchNorm statistics)
  opt_state: optax.OptState
  method_state: Any          # EMA teachers, queues, ... (see Method.init_state)
  key: jax.Array             # uint32 [2] base PRNG key; the key of step s is fold_in(key, s)


def create_optimizer(config: ml_collections.ConfigDict, num_steps: int):
  """Optax optimiser with linear warm-up + cosine decay; (transform, schedule)."""
  opt = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.learning_rate, warmup_steps=opt.warmup_steps,
      decay_steps=max(num_steps, opt.warmup_steps + 1),
      end_value=opt.learning_rate * opt.end_learning_rate_factor)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # No biases, no norms.
  if opt.name == 'sgd':
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
                     optax.sgd(schedule, momentum=opt.momentum, nesterov=opt.nesterov))
  elif opt.name == 'lars':
    tx = optax.lars(schedule, weight_decay=opt.weight_decay, weight_decay_mask=decay_mask,
                    trust_coefficient=opt.trust_coefficient, trust_ratio_mask=decay_mask,
                    momentum=opt.momentum, nesterov=opt.nesterov)
  else:
    tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                     mask=decay_mask)
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, schedule


def create_method(config: ml_collections.ConfigDict, splits: datasets.DatasetSplits) -> base.Method:
  return methods.REGISTRY[config.method](
      config, base.DataInfo(num_classes=splits.num_classes, image_shape=splits.image_shape))


def init_state(method: base.Method, tx, seed: int, sharding=None):
  """(graphdef, TrainState) with freshly initialised parameters, built by one jitted call."""
  create = lambda: method.create_model(nnx.Rngs(seed))
  graphdef = nnx.graphdef(nnx.eval_shape(create))

  def init():
    params, model_state = nnx.split(create(), nnx.Param, ...)[1:]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=tx.init(params), method_state=method.init_state(params),
                      key=jax.random.PRNGKey(seed))

  return graphdef, jax.jit(init, out_shardings=sharding)()


def train_step(state: TrainState, batch: dict, *, method: base.Method, graphdef, tx,
               augment_cfg: augment.AugmentConfig, schedule) -> tuple[TrainState, dict]:
  """One optimiser update on a global batch of uint8 images."""
  key = jax.random.fold_in(state.key, state.step)
  labelled_key, unlabelled_key, loss_key = jax.random.split(key, 3)
  views = {'labelled': {'views': augment.multi_crop(labelled_key, batch['labelled']['images'],
                                                    augment_cfg),
                        'labels': batch['labelled']['labels']}}
  if 'unlabelled' in batch:
    views['unlabelled'] = {'views': augment.multi_crop(
        unlabelled_key, batch['unlabelled']['images'], augment_cfg)}

  def loss_fn(params, model_state):
    model = nnx.merge(graphdef, params, model_state, copy=True)
    loss, (method_state, metrics) = method.loss(model, state.method_state, views, loss_key,
                                                state.step)
    return loss, (nnx.state(model, nnx.Not(nnx.Param)), method_state, metrics)

  (loss, (model_state, method_state, metrics)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params, state.model_state)
  trainable = method.trainable(state.params, state.step)
  if trainable is not None:
    grads = _masked(grads, trainable)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  if trainable is not None:
    updates = _masked(updates, trainable)
  params = optax.apply_updates(state.params, updates)
  method_state = method.update_state(params, method_state, state.step)
  metrics = {**metrics, 'loss': loss, 'learning_rate': schedule(state.step),
             'grad_norm': optax.global_norm(grads)}
  return state.replace(step=state.step + 1, params=params, model_state=model_state,
                       opt_state=opt_state, method_state=method_state), metrics


def _masked(tree, mask):
  return jax.tree.map(lambda x, keep: jnp.where(keep, x, jnp.zeros_like(x)), tree, mask)


def _write_json(path: str, data: dict) -> None:
  """Atomic: a reader never sees a half-written file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(data, f, indent=2)
  os.replace(tmp, path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the results."""
  start_time = time.time()
  os.makedirs(workdir, exist_ok=True)
  is_writer = jax.process_index() == 0
  mesh = parallel.create_mesh()
  splits = datasets.load(config)
  augment_cfg = augment.augment_config_from(config, splits.mean, splits.std, splits.image_shape)
  if is_writer:
    _write_json(os.path.join(workdir, SPLIT_FILE), splits.split_info)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))

  method = create_method(config, splits)
  tx, schedule = create_optimizer(config, config.num_steps)
  replicated = parallel.replicated(mesh)
  graphdef, state = init_state(method, tx, config.seed, replicated)

  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  latest = ckpt.latest_step()
  previous_seconds = 0.0
  if latest is not None:
    state, record = ckpt.restore(latest, state)
    previous_seconds = record['wall_seconds']
    logging.info('Resumed from %s at step %d.', ckpt.manager.directory, latest)
  elif config.init_from.paths:
    source = checkpoint.load_params(config.init_from.workdir)
    state = state.replace(params=checkpoint.copy_subtrees(
        state.params, source, tuple(config.init_from.paths)))
    logging.info('Initialised %s from %s.', list(config.init_from.paths), config.init_from.workdir)
  start_step = int(state.step)

  step_fn = jax.jit(
      functools.partial(train_step, method=method, graphdef=graphdef, tx=tx,
                        augment_cfg=augment_cfg, schedule=schedule),
      out_shardings=(replicated, replicated), donate_argnums=0)

  def run_eval(state):
    def apply_fn(variables, images):
      model = nnx.merge(graphdef, *variables)
      return method.predict(model, images), method.features(model, images)
    return evaluate.evaluate(
        apply_fn, (state.params, state.model_state), splits, mesh,
        preprocess=lambda x: augment.eval_view(x, config.augment.global_size, splits.mean,
                                               splits.std, config.eval.crop_fraction),
        batch_size=config.eval.batch_size, knn_k=config.eval.knn_k,
        knn_temperature=config.eval.knn_temperature)

  def save(state):
    ckpt.save(int(state.step), state,
              {'wall_seconds': previous_seconds + time.time() - start_time})

  writer = metric_writer.MetricWriter(workdir, enabled=is_writer)
  progress = metric_writer.Progress(config.num_steps, start_step)
  images_per_step = config.labelled_batch_size + (config.batch_size if method.uses_unlabelled else 0)
  batches = pipeline.iterate(
      splits, mesh, start_step=start_step, num_steps=config.num_steps, seed=config.seed,
      labelled_batch_size=config.labelled_batch_size,
      batch_size=config.batch_size if method.uses_unlabelled else None)
  for step, batch in zip(range(start_step + 1, config.num_steps + 1), batches):
    state, metrics = step_fn(state, batch)
    if step % config.log_every == 0 or step == config.num_steps:
      metrics = jax.device_get(metrics)
      speed = progress.update(step)
      writer.scalars(step, {**metrics, 'steps_per_second': speed,
                            'images_per_second': speed * images_per_step})
      logging.info('%s | loss %.4f', progress.line(step), float(metrics['loss']))
    if step % config.eval_every == 0 and step != config.num_steps:
      eval_metrics = run_eval(state)
      writer.scalars(step, eval_metrics)
      logging.info('step %d eval | %s', step,
                   ' | '.join(f'{k} {v:.4f}' for k, v in eval_metrics.items()))
    if step % config.checkpoint_every == 0 or step == config.num_steps:
      save(state)

  # The reported figures are the final model's, never the best periodic evaluation.
  final = run_eval(state)
  writer.scalars(config.num_steps, final)
  writer.close()
  ckpt.wait()
  ckpt.close()
  results = {
      'method': config.method, 'dataset': config.dataset,
      'labels_per_class': config.labels_per_class, 'label_fraction': config.label_fraction,
      'seed': config.seed, 'steps': int(state.step), **final,
      'wall_seconds': round(previous_seconds + time.time() - start_time, 1),
  }
  if is_writer:
    _write_json(os.path.join(workdir, RESULTS_FILE), results)
  return results


def read_results(path: str) -> dict:
  with open(path) as f:
    return json.load(f)
