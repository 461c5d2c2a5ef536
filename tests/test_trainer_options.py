"""Trainer options of S4L's recipe: the piecewise-constant learning-rate schedule and Polyak
averaging of the weights for evaluation."""

import dataclasses
import json
import math
import os

import chex
import jax
import numpy as np
import pytest

from helpers import REPO, saved_state, tiny_config
from semi_ssl import checkpoint, config_base, errors, evaluate, parallel, train
from semi_ssl.data import augment, datasets, pipeline
from semi_ssl.methods import base, supervised


def test_piecewise_schedule_warms_up_then_multiplies_by_the_factor_after_each_boundary():
  config = tiny_config()
  config.optimizer.update(
    learning_rate=0.8,
    warmup_steps=10,
    schedule='piecewise',
    decay_boundaries=(0.5, 0.8),
    decay_factor=0.1,
  )
  _, schedule = train.create_optimizer(config, num_steps=100)
  steps = [0, 5, 10, 50, 51, 80, 81, 99]  # Decayed once the step exceeds a boundary.
  np.testing.assert_allclose(
    [schedule(s) for s in steps], [0.0, 0.4, 0.8, 0.8, 0.08, 0.08, 0.008, 0.008], rtol=1e-6
  )


def test_s4l_moam_config_has_the_official_schedule_and_polyak_decay():
  """moam_step_1.sh: batch 128, lr 0.2 per 256, --schedule '10,100,150,190,200' in epochs of
  128,000 labelled images (1,000 steps), decay 0.5 ** (1 / 1,000); the later stages: none."""
  config = config_base.load_config_file(f'{REPO}/configs/s4l/imagenet_10pct.py', 'moam')
  joint = config_base.resolve(config, dict(labelled=128_116, unlabelled=1_153_051))
  assert (joint.num_steps, joint.optimizer.warmup_steps) == (200_000, 10_000)
  _, schedule = train.create_optimizer(joint, joint.num_steps)
  steps = [5_000, 10_000, 100_000, 100_001, 150_001, 190_000, 190_001, 199_999]
  expected = [0.05, 0.1, 0.1, 0.01, 1e-3, 1e-3, 1e-4, 1e-4]
  np.testing.assert_allclose([schedule(s) for s in steps], expected, rtol=1e-5)
  assert joint.polyak_decay == pytest.approx(0.5 ** (1 / 1000))
  assert config.retrain.polyak_decay is None and config.finetune.polyak_decay is None


def test_cosine_schedule_is_the_default():
  config = tiny_config()
  config.optimizer.update(learning_rate=0.1, warmup_steps=10, end_learning_rate_factor=0.0)
  _, schedule = train.create_optimizer(config, num_steps=110)
  cosine = lambda s: 0.05 * (1 + math.cos(math.pi * (s - 10) / 100))
  steps = [5, 10, 35, 60, 110]
  np.testing.assert_allclose(
    [schedule(s) for s in steps], [0.05] + [cosine(s) for s in steps[1:]], rtol=1e-5, atol=1e-8
  )


@pytest.mark.parametrize(
  'optimizer, message',
  [
    (dict(schedule='step'), "config.optimizer.schedule='step' is unknown; use cosine or"),
    (dict(schedule='piecewise', decay_boundaries=(0.5, 1.0)), r'must be fractions of the run in'),
    (dict(schedule='piecewise', decay_boundaries=(0.8, 0.5)), r'must increase strictly, e.g.'),
    (
      dict(schedule='piecewise', decay_boundaries=(0.5, 0.9), warmup_steps=2),
      r'decay_boundaries: \(0.5,\) of the run \(4\) is not after the warm-up \(2\)',
    ),
    (dict(decay_factor=0.0), r'config.optimizer.decay_factor=0.0 must be a finite number > 0'),
  ],
)
def test_bad_schedules_are_refused_in_one_line(optimizer, message):
  config = tiny_config(num_steps=4)
  config.optimizer.update(optimizer)
  with pytest.raises(ValueError, match=message):
    config_base.validate(config, num_devices=8, workdir=None)


def test_a_boundary_in_the_warm_up_is_refused_once_the_run_knows_its_steps():
  """A warm-up in epochs against a length in steps: `validate` cannot compare them, the
  optimiser of the resolved config does (3 steps an epoch: a warm-up of 60 steps)."""
  config = tiny_config(num_steps=100)
  config.optimizer.update(
    schedule='piecewise', decay_boundaries=(0.5,), warmup_steps=None, warmup_epochs=20.0
  )
  config_base.validate(config, num_devices=8, workdir=None)
  resolved = config_base.resolve(config, dict(labelled=48, unlabelled=48))
  with pytest.raises(
    ValueError, match=r'\(0.5,\) of the run \(100\) is not after the warm-up \(60\)'
  ):
    train.create_optimizer(resolved, resolved.num_steps)


@pytest.mark.parametrize('decay', [1.0, -0.1])
def test_bad_polyak_decay_is_refused(decay):
  with pytest.raises(
    ValueError, match=rf'config.polyak_decay={decay} must be a number in \[0, 1\)'
  ):
    config_base.validate(tiny_config(polyak_decay=decay), num_devices=8, workdir=None)


class _NaNAtStep2(supervised.Supervised):
  """The supervised baseline whose loss is NaN at the second step (index 1): never applied."""

  def loss(self, model, state, batch, key, step):
    loss, aux = super().loss(model, state, batch, key, step)
    return jax.numpy.where(step == 1, jax.numpy.nan, loss), aux


def _flat(params) -> dict:
  return checkpoint._flatten(jax.device_get(params))


def test_polyak_average_is_the_ema_of_the_applied_steps_parameters():
  decay = 0.75
  config = tiny_config(nonfinite='skip', polyak_decay=decay)
  splits = datasets.load(config)
  method = _NaNAtStep2(
    config, base.DataInfo(splits.num_classes, splits.image_shape), parallel.create_mesh(1)
  )
  aug = augment.augment_config_from(config, splits.mean, splits.std, splits.image_shape)
  _, init, step = train.step_builders(config, method, aug)
  state = jax.jit(init)()
  step = jax.jit(step)
  average = _flat(state.params)  # From the initial parameters, as TF's EMA of a Variable.
  for s in range(config.num_steps):
    before = _flat(state.params)
    batch = pipeline.host_batch(splits, s, seed=0, labelled_batch_size=16, batch_size=None)
    state, _ = step(state, batch)
    params = _flat(state.params)
    if s == 1:  # Skipped: neither the parameters nor their average move.
      chex.assert_trees_all_equal(params, before)
      continue
    average = {k: decay * average[k] + (1 - decay) * params[k] for k in average}
  assert int(state.skipped_steps) == 1
  chex.assert_trees_all_close(_flat(state.polyak_params), average, rtol=1e-5, atol=1e-7)
  assert not np.allclose(average['head/kernel'], _flat(state.params)['head/kernel'])


def test_without_averaging_the_train_state_keeps_its_fields():
  """So that checkpoints written before Polyak averaging existed still restore."""
  config = tiny_config()
  assert config.polyak_decay is None
  splits = datasets.load(config)
  method = train.create_method(config, splits, parallel.create_mesh(1))
  tx, _ = train.create_optimizer(config, config.num_steps)
  abstract = jax.eval_shape(train.state_initializer(method, tx, config.seed)[1])
  assert type(abstract) is train.TrainState
  assert [field.name for field in dataclasses.fields(abstract)] == [
    'step',
    'params',
    'model_state',
    'opt_state',
    'method_state',
    'key',
    'skipped_steps',
    'first_skipped',
  ]


def test_evaluations_a_resumed_run_and_later_stages_read_the_polyak_average(tmp_path, monkeypatch):
  """The periodic (step 2) and final (step 4) evaluations get the average checkpointed with the
  state; a run resumed from step 2 ends with the same average; init_from and a frozen teacher
  (`checkpoint.load_variables`) read it as the parameters."""
  evaluated = []
  make_evaluator = evaluate.make_evaluator

  def recording_evaluator(*args, **kwargs):
    run = make_evaluator(*args, **kwargs)
    return lambda variables: evaluated.append(_flat(variables[0])) or run(variables)

  monkeypatch.setattr(evaluate, 'make_evaluator', recording_evaluator)
  workdir = str(tmp_path / 'run')
  config = tiny_config(polyak_decay=0.5, keep_checkpoints=5)
  first = train.train_and_evaluate(config, workdir)
  saved = {s: saved_state(workdir, s) for s in (2, 4)}
  assert len(evaluated) == 2
  for seen, s in zip(evaluated, (2, 4)):
    chex.assert_trees_all_equal(seen, _flat(saved[s]['polyak_params']))
  assert not np.array_equal(evaluated[1]['head/kernel'], _flat(saved[4]['params'])['head/kernel'])
  chex.assert_trees_all_equal(
    checkpoint.load_variables(workdir)['params'], _flat(saved[4]['polyak_params'])
  )
  # Lose the last checkpoint and the results, as if killed between steps 2 and 4.
  ckpt = checkpoint.Checkpointer(workdir, keep=5)
  ckpt.manager.delete(4)
  ckpt.close()
  os.remove(os.path.join(workdir, train.RESULTS_FILE))
  again = train.train_and_evaluate(config, workdir)
  chex.assert_trees_all_equal(
    _flat(saved_state(workdir, 4)['polyak_params']), _flat(saved[4]['polyak_params'])
  )
  assert again['test_top1'] == first['test_top1']


def test_a_run_started_before_these_options_resumes_unless_they_change(tmp_path):
  """Its config.json lacks the new keys: at their defaults they are what it trained with."""
  config = tiny_config()
  saved = json.loads(config.to_json_best_effort())
  del saved['polyak_decay']
  for key in ('schedule', 'decay_boundaries', 'decay_factor'):
    del saved['optimizer'][key]
  (tmp_path / train.CONFIG_FILE).write_text(json.dumps(saved))
  train.check_config_unchanged(config, tmp_path)
  config.polyak_decay = 0.5
  with pytest.raises(errors.UserError, match='polyak_decay was absent, now 0.5'):
    train.check_config_unchanged(config, tmp_path)


def test_an_s4l_run_started_before_label_smoothing_resumes_unless_it_changes(tmp_path):
  config = tiny_config('s4l')
  saved = json.loads(config.to_json_best_effort())
  del saved['s4l']['label_smoothing']
  (tmp_path / train.CONFIG_FILE).write_text(json.dumps(saved))
  train.check_config_unchanged(config, tmp_path)
  config.s4l.label_smoothing = 0.1
  with pytest.raises(errors.UserError, match='s4l.label_smoothing was absent, now 0.1'):
    train.check_config_unchanged(config, tmp_path)
