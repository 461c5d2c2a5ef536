"""The trainer: sharded step == single-device step, resume, stages, init_from, config errors."""

import functools
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from helpers import REPO, cpu_env, saved_state, tiny_config
from semi_ssl import checkpoint, config_base, errors, evaluate, main, methods, parallel, train
from semi_ssl.data import augment, datasets, pipeline
from semi_ssl.methods import base


def step_on(devices, config, batch_np):
  """(loss, params) after one train step with the batch sharded over `devices`."""
  mesh = Mesh(np.asarray(devices), (parallel.DATA_AXIS,))
  splits = datasets.load(config)
  method = train.create_method(config, splits, mesh)
  tx, schedule = train.create_optimizer(config, config.num_steps)
  graphdef, state = train.init_state(method, tx, config.seed)
  state = jax.device_put(state, parallel.replicated(mesh))
  batch = jax.device_put(batch_np, parallel.batch_sharding(mesh))
  aug = augment.augment_config_from(config, splits.mean, splits.std, splits.image_shape)
  step = jax.jit(
    functools.partial(
      train.train_step, method=method, graphdef=graphdef, tx=tx, augment_cfg=aug, schedule=schedule
    )
  )
  state, metrics = step(state, batch)
  state, metrics = step(state, batch)
  return float(metrics['loss']), jax.device_get(state.params)


def test_sharded_step_equals_single_device_step():
  config = tiny_config()
  splits = datasets.load(config)
  batch = pipeline.host_batch(splits, 0, seed=0, labelled_batch_size=16, batch_size=None)
  loss_1, params_1 = step_on(jax.devices()[:1], config, batch)
  loss_8, params_8 = step_on(jax.devices()[:8], config, batch)
  assert len(jax.devices()) == 8
  np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
  chex.assert_trees_all_close(params_8, params_1, rtol=1e-4, atol=1e-5)


def test_resume_continues_from_the_last_checkpoint(tmp_path):
  # 4 steps as 4/3 passes over the 50 labelled images, 3 batches of 16 each (resolved.json).
  config = tiny_config(num_steps=None, num_epochs=4 / 3, epoch_stream='labelled')
  workdir = str(tmp_path / 'run')
  first = train.train_and_evaluate(config, workdir)
  assert first['steps'] == 4
  with open(os.path.join(workdir, train.RESOLVED_FILE)) as f:
    resolved = json.load(f)
  assert first['resolved'] == resolved
  assert (resolved['examples_per_epoch'], resolved['steps_per_epoch']) == (50, 3)
  assert (resolved['num_steps'], resolved['learning_rate']) == (4, 0.1)
  final = saved_state(workdir, 4)['params']
  # The start-up summary and the provenance in results.json.
  with open(os.path.join(workdir, train.SUMMARY_FILE)) as f:
    summary = json.load(f)
  assert summary['parameters']['total'] == sum(x.size for x in jax.tree.leaves(final))
  assert summary['batch'] == {'labelled': {'global': 16, 'per_device': 2}}
  assert summary['resolved'] == resolved and summary['mesh'] == {'data': 8, 'model': 1}
  assert first['provenance'] == summary['provenance']
  assert first['provenance']['device_count'] == 8
  assert first['provenance']['versions']['jax'] == jax.__version__
  # Per-class accuracy and the confusion matrix of the 360 test images, in results.json.
  confusion = np.array(first['test_confusion_matrix'])
  assert confusion.shape == (10, 10) and confusion.sum() == 360
  assert first['test_top1'] == pytest.approx(np.trace(confusion) / 360)
  np.testing.assert_allclose(first['test_per_class_top1'], np.diag(confusion) / confusion.sum(1))
  # The linear probe beside the kNN's, its L2 strength chosen on the validation split.
  assert 0 <= first['linear_top1'] <= 1 and 0 <= first['val_linear_top1'] <= 1
  assert first['linear_l2'] in evaluate.LINEAR_PROBE_L2
  # Lose the last checkpoint and the results, as if killed between steps 2 and 4.
  ckpt = checkpoint.Checkpointer(workdir, keep=5)
  ckpt.manager.delete(4)
  ckpt.close()
  os.remove(os.path.join(workdir, train.RESULTS_FILE))
  assert checkpoint.Checkpointer(workdir, keep=5).last_complete_step == 2
  # A resumed run resolves as the first one did, or stops before restoring anything.
  with open(os.path.join(workdir, train.RESOLVED_FILE), 'w') as f:
    json.dump({**resolved, 'steps_per_epoch': 2}, f)
  with pytest.raises(errors.UserError, match=r'resolved.json\): steps_per_epoch was 2, now 3'):
    train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, train.RESOLVED_FILE), 'w') as f:
    json.dump(resolved, f)
  again = train.train_and_evaluate(config, workdir)
  assert again['steps'] == 4
  # Every evaluation once, the resumed run's final one (step 4) in place of the first run's.
  with open(os.path.join(workdir, train.EVAL_HISTORY_FILE)) as f:
    history = [json.loads(line) for line in f]
  assert [record['step'] for record in history] == [2, 4]
  assert history[1]['test_top1'] == again['test_top1'] and history[0].keys() == history[1].keys()
  # Same data, same keys: the resumed run ends where the first one did.
  chex.assert_trees_all_equal(saved_state(workdir, 4)['params'], final)
  assert again['test_top1'] == first['test_top1']


def test_append_evaluation_keeps_one_line_per_step_in_order(tmp_path):
  path = epath.Path(tmp_path) / train.EVAL_HISTORY_FILE
  for step, top1 in [(4, 0.5), (2, 0.25), (4, 0.75)]:
    train.append_evaluation(path, step, {'test_top1': top1})
  assert path.read_text().splitlines() == [
    json.dumps({'step': 2, 'test_top1': 0.25}),
    json.dumps({'step': 4, 'test_top1': 0.75}),
  ]


def test_the_confusion_matrix_of_many_classes_is_its_own_file(tmp_path):
  workdir = epath.Path(tmp_path)
  few = train.per_class_results(np.eye(2, dtype=int) * 3, workdir, is_writer=True)
  assert few == {'test_per_class_top1': [1.0, 1.0], 'test_confusion_matrix': [[3, 0], [0, 3]]}
  confusion = np.ones((101, 101), int)
  many = train.per_class_results(confusion, workdir, is_writer=True)
  assert many['test_confusion_matrix'] == train.CONFUSION_FILE
  assert many['test_per_class_top1'] == [1 / 101] * 101
  np.testing.assert_array_equal(np.load(workdir / train.CONFUSION_FILE), confusion)


def test_copy_subtrees_replaces_only_the_named_paths():
  config = tiny_config()
  splits = datasets.load(config)
  method = train.create_method(config, splits, parallel.create_mesh())
  tx, _ = train.create_optimizer(config, 4)
  _, target = train.init_state(method, tx, seed=0)
  _, source = train.init_state(method, tx, seed=1)
  source_flat = checkpoint._flatten(jax.device_get(source.params))
  before = checkpoint._flatten(jax.device_get(target.params))
  after = checkpoint._flatten(checkpoint.copy_subtrees(target.params, source_flat, ('backbone',)))
  chex.assert_trees_all_equal(
    after,
    {path: source_flat[path] if path.startswith('backbone/') else before[path] for path in before},
  )
  assert any(p.startswith('head/') for p in after)


def test_copy_subtrees_names_the_first_mismatch():
  config = tiny_config()
  splits = datasets.load(config)
  method = train.create_method(config, splits, parallel.create_mesh())
  tx, _ = train.create_optimizer(config, 4)
  _, state = train.init_state(method, tx, seed=0)
  source = checkpoint._flatten(jax.device_get(state.params))
  path = sorted(p for p in source if p.startswith('head/'))[0]
  source[path] = np.zeros((3,) + source[path].shape)
  with pytest.raises(ValueError, match=f"'{path}' has shape"):
    checkpoint.copy_subtrees(state.params, source, ('head',))
  with pytest.raises(ValueError, match="'nothing' matches no parameter"):
    checkpoint.copy_subtrees(state.params, source, ('nothing',))


class _NoClassifier(methods.supervised.Supervised):
  """The baseline as a method without a classifier: its `predict` must not be called."""

  has_classifier = False

  def predict(self, model, images):
    raise AssertionError('predict called for a method without a classifier')


def test_two_stage_config_with_init_from_and_skip_of_finished_stage(tmp_path, monkeypatch):
  """... whose first stage has no classifier (its kNN probe only, evaluated at step 2 and 4);
  DIR/results.json holds the last stage's figures and each stage's."""
  monkeypatch.setitem(methods.REGISTRY, 'no_classifier', _NoClassifier)
  pre = tiny_config(method='no_classifier', name='pretrain')
  fine = tiny_config(name='finetune', num_steps=2)
  fine.optimizer.learning_rate = 0.0  # The fine-tune stage keeps what it was initialised with.
  fine.init_from.stage = 'pretrain'
  fine.init_from.paths = ('backbone',)
  plan = main.stage_plan(tiny_config(stages=(pre, fine)), str(tmp_path))
  assert [d for _, d in plan] == [str(tmp_path / 'pretrain'), str(tmp_path / 'finetune')]
  assert plan[1][0].init_from.workdir == str(tmp_path / 'pretrain')
  rows = main.run_plan(plan)
  assert [r['stage'] for r in rows] == ['pretrain', 'finetune']
  assert not {'test_top1', 'test_top5', 'val_top1', 'val_top5'} & set(rows[0])
  assert {'knn_top1', 'val_knn_top1'} <= set(rows[0]) and 'test_top1' in rows[1]
  assert main.format_table(rows).splitlines()[2].split()[6:9] == ['-', '-', '-']
  header, _, first_row = main.format_table(rows).splitlines()[:3]
  linear = header.split().index('linear_top1')
  assert first_row.split()[linear] == f'{100 * rows[0]["linear_top1"]:.2f}%'
  summary = json.loads((tmp_path / train.RESULTS_FILE).read_text())
  stage_results = [{k: v for k, v in r.items() if k != 'stage'} for r in rows]
  assert summary == {
    **stage_results[1],
    'stages': dict(zip(['pretrain', 'finetune'], stage_results)),
  }
  pre_params = saved_state(plan[0][1], 4)['params']
  fine_params = saved_state(plan[1][1], 2)['params']
  chex.assert_trees_all_equal(fine_params['backbone'], pre_params['backbone'])
  assert any(
    not np.array_equal(fine, pre)
    for fine, pre in zip(jax.tree.leaves(fine_params['head']), jax.tree.leaves(pre_params['head']))
  )
  written = [tmp_path / 'pretrain' / train.RESULTS_FILE, tmp_path / train.RESULTS_FILE]
  mtimes = [path.stat().st_mtime_ns for path in written]
  assert main.finished(plan)
  assert main.run_plan(plan) == rows  # Both stages finished: nothing runs again.
  assert [path.stat().st_mtime_ns for path in written] == mtimes
  # The same run from elsewhere: the fine-tune's init_from.workdir is spelled differently.
  monkeypatch.chdir(tmp_path.parent)
  assert main.run_plan(main.stage_plan(tiny_config(stages=(pre, fine)), tmp_path.name)) == rows
  fine.optimizer.learning_rate = 0.1
  with pytest.raises(
    ValueError,
    match=r'finetune holds a run that started with other settings '
    r'.*optimizer.learning_rate was 0.0, now 0.1\. Use a new --workdir',
  ):
    main.run_plan(main.stage_plan(tiny_config(stages=(pre, fine)), str(tmp_path)))
  # Another run (other labels) sharing the finished pretraining: read from there, not trained.
  shared = tiny_config(method='no_classifier', name='pretrain', labels_per_class=1)
  shared.finished_workdir = str(tmp_path / 'pretrain')
  other = tmp_path.parent / f'{tmp_path.name}_other'
  plan = main.stage_plan(tiny_config(stages=(shared, fine)), str(other))
  assert [d for _, d in plan] == [str(tmp_path / 'pretrain'), str(other / 'finetune')]
  assert plan[1][0].init_from.workdir == str(tmp_path / 'pretrain')
  plan = main.stage_plan(tiny_config(stages=(shared,)), str(other))
  assert main.run_plan(plan) == rows[:1] and os.listdir(other) == [train.RESULTS_FILE]
  assert [path.stat().st_mtime_ns for path in written] == mtimes
  shared.seed = 1
  with pytest.raises(errors.UserError, match=r'pretrain holds a run .*seed was 0, now 1\. Point'):
    main.run_plan(main.stage_plan(tiny_config(stages=(shared,)), str(other)))
  shared.finished_workdir = str(other / 'nothing')
  with pytest.raises(errors.UserError, match=r'Stage pretrain: finished_workdir=.* no finished'):
    main.run_plan(main.stage_plan(tiny_config(stages=(shared,)), str(other)))


class _WithTeacher(methods.REGISTRY['supervised']):
  """The supervised baseline with an EMA-teacher-like copy of the parameters as its state."""

  def init_state(self, params):
    return {'teacher': jax.tree.map(jax.numpy.copy, params)}


def test_init_from_copies_batchnorm_statistics_and_rebuilds_the_teacher(tmp_path):
  source_dir = str(tmp_path / 'source')
  train.train_and_evaluate(tiny_config(num_steps=2), source_dir)
  source = checkpoint.load_variables(source_dir)
  assert any('mean' in p for p in source['model_state'])  # BatchNorm running statistics.
  config = tiny_config(seed=1)
  method = _WithTeacher(
    config, base.DataInfo(num_classes=10, image_shape=(8, 8, 1)), parallel.create_mesh()
  )
  init = train.state_initializer(method, train.create_optimizer(config, 1)[0], seed=1)[1]
  sharding = train.state_sharding(method, jax.eval_shape(init))
  fresh = jax.device_get(jax.jit(init, out_shardings=sharding)())
  state = train.initialise_from(
    jax.jit(init, out_shardings=sharding)(), source, ('backbone',), method, sharding
  )
  for name, tree in (('params', state.params), ('model_state', state.model_state)):
    before = checkpoint._flatten(getattr(fresh, name))
    chex.assert_trees_all_equal(
      checkpoint._flatten(tree),
      {
        path: source[name][path] if path.startswith('backbone/') else value
        for path, value in before.items()
      },
    )
  chex.assert_trees_all_equal(state.method_state['teacher'], state.params)


def test_gcs_workdir_holds_the_records_and_checkpoints(tmp_path, monkeypatch, gcs_on_disk):
  monkeypatch.chdir(tmp_path)  # The URL taken for a local path would make ./gs:/bucket/run.
  plan = main.stage_plan(tiny_config(num_steps=2, eval_every=100), 'gs://bucket/run')
  rows = main.run_plan(plan)
  run = gcs_on_disk / 'bucket' / 'run'
  assert not (tmp_path / 'gs:').exists()
  assert json.loads((run / train.RESULTS_FILE).read_text()) == {
    k: v for k, v in rows[0].items() if k != 'stage'
  }
  assert (run / train.SPLIT_FILE).exists() and (run / 'config.json').exists()
  assert list((run / 'tensorboard').iterdir())
  assert (run / checkpoint.CHECKPOINT_DIR / '2' / 'state').is_dir()
  assert (run / checkpoint.CHECKPOINT_DIR / '2' / 'commit_success.txt').exists()  # GCS's way.
  ckpt = checkpoint.Checkpointer('gs://bucket/run', keep=5)
  assert str(ckpt.directory) == 'gs://bucket/run/checkpoints' and ckpt.last_complete_step == 2
  ckpt.close()
  assert any(
    p.startswith('backbone/') for p in checkpoint.load_variables('gs://bucket/run')['params']
  )
  mtime = (run / train.RESULTS_FILE).stat().st_mtime_ns
  assert main.run_plan(plan) == rows  # Finished: read back from gs://, not trained again.
  assert (run / train.RESULTS_FILE).stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
  'override, message',
  [
    (dict(method='nope'), "config.method='nope' is unknown"),
    (
      dict(labelled_batch_size=12),
      'config.labelled_batch_size=12 is not divisible by the 8 devices',
    ),
    (dict(labels_per_class=1000), 'labels_per_class'),
    (dict(dataset='mnist'), 'mnist'),
    (dict(augment=dict(global_size=16)), 'global_size'),
    (dict(eval=dict(batch_size=100)), 'config.eval.batch_size=100 is not divisible by the 8'),
    (dict(eval=dict(crop_fraction=1.5)), 'config.eval.crop_fraction=1.5 must be in'),
    (dict(model=dict(backbone='resnet7')), "Unknown backbone 'resnet7'"),
  ],
)
def test_bad_config_names_the_key(override, message):
  with pytest.raises(ValueError, match=message):
    config_base.validate(tiny_config(**override), num_devices=8, workdir=None)


@pytest.mark.parametrize(
  'method, hyperparameter, value, message',
  [
    ('suave', 'num_prototypes', 3, 'num_prototypes'),
    ('semppl', 'queue_size', 100, 'queue_size'),
  ],
)
def test_bad_method_hyperparameters_are_caught_before_any_data_is_read(
  method, hyperparameter, value, message
):
  config = config_base.load_config_file(f'{REPO}/configs/{method}/digits.py')
  config[method][hyperparameter] = value
  with pytest.raises(ValueError, match=message):
    config_base.validate(config, num_devices=8, workdir=None)


def test_unwritable_workdir_is_refused(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')  # A workdir below a file cannot be created, even by root.
  with pytest.raises(ValueError, match='not writable'):
    config_base.validate(tiny_config(), num_devices=1, workdir=str(blocker / 'run'))


def test_main_command_end_to_end(tmp_path):
  """The README's main job, shortened: writes results.json and prints the table."""
  workdir = tmp_path / 'run'
  cmd = [
    sys.executable,
    '-m',
    'semi_ssl.main',
    '--config=configs/supervised/digits.py',
    f'--workdir={workdir}',
    '--config.num_steps=6',
    '--config.log_every=3',
    '--config.eval_every=3',
    '--config.checkpoint_every=3',
    '--config.model.width=0.25',
  ]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=cpu_env(), timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads((workdir / train.RESULTS_FILE).read_text())
  for key in (
    'method',
    'dataset',
    'labels_per_class',
    'seed',
    'steps',
    'test_top1',
    'knn_top1',
    'wall_seconds',
  ):
    assert key in results
  assert results['steps'] == 6 and 0.0 <= results['test_top1'] <= 1.0
  assert 'test_top1' in out.stdout and 'supervised' in out.stdout
  assert f'Results: {workdir / train.RESULTS_FILE}' in out.stdout
  assert (workdir / 'split.json').exists() and list((workdir / 'tensorboard').iterdir())
  # The same workdir with another seed: one line, before anything compiles.
  out = subprocess.run(
    cmd + ['--config.seed=1'], cwd=REPO, capture_output=True, text=True, env=cpu_env(), timeout=300
  )
  assert out.returncode == 1 and out.stderr.strip().splitlines() == [
    f'Error: {workdir} holds a run that started with other settings ({workdir}/config.json): '
    'seed was 0, now 1. Use a new --workdir, or rerun with the original value.'
  ], out.stderr


@pytest.mark.parametrize('name', ['sgd', 'lars', 'adamw'])
def test_optimizers_warm_up_and_skip_decay_on_biases(name):
  config = tiny_config()
  config.optimizer.update(name=name, learning_rate=0.1, warmup_steps=10, weight_decay=0.1)
  tx, schedule = train.create_optimizer(config, num_steps=100)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 0.05, 0.1], rtol=1e-6)
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)
  params = {'kernel': jax.numpy.ones((2, 2)), 'bias': jax.numpy.ones((2,))}
  zero_grads = jax.tree.map(jax.numpy.zeros_like, params)
  opt_state = tx.init(params)
  for _ in range(6):  # Past step 0, whose learning rate is 0.
    updates, opt_state = tx.update(zero_grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  # With zero gradients only weight decay moves parameters: kernels shrink, biases stay.
  assert float(params['kernel'][0, 0]) < 1.0
  np.testing.assert_array_equal(params['bias'], np.ones(2))


def test_fsdp_splits_large_arrays_and_trains_like_data_parallelism(tmp_path):
  mesh = parallel.create_mesh(4)
  assert dict(mesh.shape) == {'data': 2, 'model': 4}
  shardings = parallel.state_sharding(
    {
      'kernel': jax.ShapeDtypeStruct((3, 3, 64, 128), np.float32),
      'bias': jax.ShapeDtypeStruct((128,), np.float32),
    },
    mesh,
  )
  assert shardings['kernel'].spec == jax.sharding.PartitionSpec(None, None, None, 'model')
  assert shardings['bias'].spec == jax.sharding.PartitionSpec(None)
  config = tiny_config(num_steps=2, checkpoint_every=2, eval_every=100)
  config.model.width = 1.0  # Convolutions of 64 x 64 x 3 x 3: large enough to be split.
  fsdp = config.copy_and_resolve_references()
  fsdp.mesh.model = 4
  train.train_and_evaluate(config, str(tmp_path / 'dp'))
  train.train_and_evaluate(fsdp, str(tmp_path / 'fsdp'))
  chex.assert_trees_all_close(
    saved_state(str(tmp_path / 'fsdp'), 2)['params'],
    saved_state(str(tmp_path / 'dp'), 2)['params'],
    rtol=1e-4,
    atol=1e-5,
  )


class _GuessesZero(methods.supervised.Supervised):
  """The baseline with one further prediction: class 0 for every image."""

  def eval_predictions(self, model, state, images):
    return {'always_zero': jax.numpy.zeros(images.shape[0], jax.numpy.int32)}


def test_further_eval_predictions_are_reported_as_top1(tmp_path, monkeypatch):
  """... on the test split and on the validation split (val_*), in results.json too."""
  monkeypatch.setitem(methods.REGISTRY, 'guesses_zero', _GuessesZero)
  results = train.train_and_evaluate(
    tiny_config(method='guesses_zero', num_steps=2), str(tmp_path / 'run')
  )
  splits = datasets.load(tiny_config())
  assert results['always_zero_top1'] == pytest.approx(np.mean(splits.test_labels == 0))
  assert len(splits.val_labels) == 144
  assert results['val_always_zero_top1'] == pytest.approx(np.mean(splits.val_labels == 0))
  saved = train.read_results(tmp_path / 'run' / train.RESULTS_FILE)
  assert saved == results and 0 <= saved['val_top1'] <= 1 and 0 <= saved['val_knn_top1'] <= 1


class _LinearBackbone(nnx.Module):
  """Mean-pooled pixels through one linear layer: a backbone that compiles in no time."""

  def __init__(self, channels: int, rngs: nnx.Rngs):
    self.feature_dim = 4
    self.linear = nnx.Linear(channels, self.feature_dim, rngs=rngs)

  def __call__(self, x, *, train):
    del train
    return self.linear(x.mean(axis=(1, 2)))


class _HeadFrozenFromStep2(methods.supervised.Supervised):
  """The baseline on `_LinearBackbone`, its classifier frozen from step 2 on."""

  def create_model(self, rngs):
    backbone = _LinearBackbone(self.data.image_shape[-1], rngs)
    return methods.supervised.Classifier(backbone, self.data.num_classes, rngs)

  def trainable(self, params, step):
    return jax.tree_util.tree_map_with_path(
      lambda path, _: (path[0].key != 'head') | (step < 2), params
    )


@pytest.mark.parametrize('name', ['sgd', 'lars', 'adamw'])
def test_frozen_parameters_keep_their_value_and_optimizer_state(name):
  """As PyTorch's `grad = None`: no weight decay, no momentum decay, no moment update."""
  config = tiny_config(num_steps=5)
  config.optimizer.update(name=name, learning_rate=0.1, warmup_steps=1, weight_decay=0.1)
  splits = datasets.load(config)
  method = _HeadFrozenFromStep2(
    config, base.DataInfo(splits.num_classes, splits.image_shape), parallel.create_mesh(1)
  )
  tx, schedule = train.create_optimizer(config, config.num_steps)
  graphdef, state = train.init_state(method, tx, config.seed)
  aug = augment.augment_config_from(config, splits.mean, splits.std, splits.image_shape)
  step = jax.jit(
    functools.partial(
      train.train_step, method=method, graphdef=graphdef, tx=tx, augment_cfg=aug, schedule=schedule
    )
  )
  states = [jax.device_get(state)]
  for s in range(config.num_steps):
    batch = pipeline.host_batch(splits, s, seed=0, labelled_batch_size=16, batch_size=None)
    state, _ = step(state, batch)
    states.append(jax.device_get(state))

  def part(state, name):
    """The arrays of parameter `name` and of its optimiser state (momentum, moments)."""
    leaves = jax.tree_util.tree_leaves_with_path((state.params, state.opt_state))
    return [x for path, x in leaves if f"['{name}']" in jax.tree_util.keystr(path)]

  start, frozen, end = states[0], states[2], states[-1]
  assert len(part(end, 'head')) > 2  # Kernel, bias and their optimiser state.
  chex.assert_trees_all_equal(part(end, 'head'), part(frozen, 'head'))
  for trained, before in (
    (part(frozen, 'head'), part(start, 'head')),
    (part(end, 'backbone'), part(frozen, 'backbone')),
  ):
    assert all(not np.array_equal(a, b) for a, b in zip(trained, before) if a.ndim > 1)
