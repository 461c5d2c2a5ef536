"""Faults: preemption (SIGTERM, SIGKILL), divergence, broken or foreign checkpoints, full disk,
bad config keys. Each test provokes the fault for real and checks what the program does."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from semi_ssl import checkpoint, errors, main, methods, train
from semi_ssl.methods import supervised
from test_train import REPO, _cpu_env, tiny_config

# A small Suave run with every piece of state a resume must restore: EMA teacher, queue,
# optimiser momentum, data position, PRNG key.
SUAVE_FLAGS = ['--config=configs/suave/digits.py', '--config.num_steps=40',
               '--config.batch_size=32', '--config.labelled_batch_size=16',
               '--config.model.width=0.25', '--config.log_every=5', '--config.eval_every=1000',
               '--config.checkpoint_every=10', '--config.keep_checkpoints=10',
               '--config.suave.queue_size=64', '--config.suave.ema_momentum=0.9',
               '--config.augment.num_local_crops=0']  # Fewer crops: a quicker compile.


def _main(workdir, flags, shell_prefix=''):
  """The main command in a subprocess; `shell_prefix` (e.g. 'ulimit -f 20;') runs before it."""
  command = [sys.executable, '-m', 'semi_ssl.main', f'--workdir={workdir}', *flags]
  if shell_prefix:
    command = ['bash', '-c', f'{shell_prefix} exec "$@"', 'bash', *command]
  return subprocess.Popen(command, cwd=REPO, env=_cpu_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _finish(process, timeout=300):
  out, err = process.communicate(timeout=timeout)
  return process.returncode, out, err


def _steps(workdir):
  directory = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []


def _saved_state(workdir, step):
  """Every array of the train state saved at `step`: {path: np.ndarray}."""
  path = os.path.join(workdir, checkpoint.CHECKPOINT_DIR, str(step), 'state')
  return checkpoint._flatten(checkpoint.read_state(path))


def _wait_for(condition, process, timeout=240):
  deadline = time.time() + timeout
  while not condition():
    assert process.poll() is None, _finish(process)[2][-3000:]
    assert time.time() < deadline, 'timed out'
    time.sleep(0.05)


def test_sigkill_then_rerun_is_bit_identical_to_an_uninterrupted_run(tmp_path):
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  rc, _, err = _finish(_main(straight, SUAVE_FLAGS))
  assert rc == 0, err[-3000:]

  process = _main(killed, SUAVE_FLAGS)
  _wait_for(lambda: _steps(killed) and _steps(killed)[-1] >= 20, process)
  process.send_signal(signal.SIGKILL)  # Possibly in the middle of writing step 30.
  process.wait()
  assert not os.path.exists(os.path.join(killed, train.RESULTS_FILE))
  assert _steps(killed)[-1] < 40
  rc, _, err = _finish(_main(killed, SUAVE_FLAGS))
  assert rc == 0, err[-3000:]
  assert 'Resumed from' in err

  expected, resumed = _saved_state(straight, 40), _saved_state(killed, 40)
  assert any(p.startswith('method_state/queue') for p in expected)
  assert any(p.startswith('method_state/teacher') for p in expected)
  assert expected.keys() == resumed.keys()
  for path in expected:
    np.testing.assert_array_equal(resumed[path], expected[path], err_msg=path)
  results = [json.load(open(os.path.join(d, train.RESULTS_FILE))) for d in (straight, killed)]
  assert results[0]['test_top1'] == results[1]['test_top1']
  assert results[0]['knn_top1'] == results[1]['knn_top1']


def test_sigterm_saves_at_the_next_step_and_exits_zero(tmp_path):
  workdir = str(tmp_path / 'run')
  flags = SUAVE_FLAGS + ['--config.num_steps=100000', '--config.checkpoint_every=100000']
  process = _main(workdir, flags)
  _wait_for(lambda: os.path.exists(os.path.join(workdir, 'tensorboard')) and
            any(os.path.getsize(os.path.join(workdir, 'tensorboard', f)) > 200
                for f in os.listdir(os.path.join(workdir, 'tensorboard'))), process)
  process.send_signal(signal.SIGTERM)
  rc, out, err = _finish(process)
  assert rc == 0, err[-3000:]
  assert 'Preempted: stopped at step' in out
  step = int(out.split('stopped at step ')[1].split()[0])
  assert _steps(workdir) == [step] and 0 < step < 100000
  assert int(_saved_state(workdir, step)['step']) == step


class _NaNAtStep3(supervised.Supervised):
  """The supervised baseline whose loss is NaN at the third step."""

  def loss(self, model, state, batch, key, step):
    loss, aux = super().loss(model, state, batch, key, step)
    return jax.numpy.where(step == 2, jax.numpy.nan, loss), aux


@pytest.fixture
def nan_method(monkeypatch):
  monkeypatch.setitem(methods.REGISTRY, 'nan_at_3', _NaNAtStep3)
  return tiny_config(method='nan_at_3', num_steps=6, log_every=2, checkpoint_every=2,
                     keep_checkpoints=5)


def test_nonfinite_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path, nan_method):
  workdir = str(tmp_path / 'run')
  with pytest.raises(errors.UserError, match='not finite at step 3.*Last good checkpoint: step 2'):
    train.train_and_evaluate(nan_method, workdir)
  assert _steps(workdir) == [2]  # Nothing was saved after the bad step.


def test_nonfinite_loss_is_skipped_when_the_config_says_so(tmp_path, nan_method):
  nan_method.nonfinite = 'skip'
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(nan_method, workdir)
  assert results['skipped_steps'] == 1 and results['steps'] == 6
  before, after = _saved_state(workdir, 2), _saved_state(workdir, 4)
  assert all(np.isfinite(v).all() for p, v in after.items() if p.startswith('params/'))
  assert any(not np.array_equal(after[p], before[p]) for p in after if p.startswith('params/'))
  assert int(after['first_skipped']) == 3


class _NaNStateAtSteps3And5(supervised.Supervised):
  """The supervised baseline with finite losses and gradients throughout, whose step 3 makes a
  BatchNorm mean NaN and whose step 5 makes its method state (a count of updates) NaN."""

  def init_state(self, params):
    return {'updates': jax.numpy.zeros(())}

  def loss(self, model, state, batch, key, step):
    loss, aux = super().loss(model, state, batch, key, step)
    stats = nnx.state(model, nnx.BatchStat)
    nnx.update(model, jax.tree.map(lambda x: jax.numpy.where(step == 2, jax.numpy.nan, x), stats))
    return loss, aux

  def update_state(self, params, state, step):
    return {'updates': state['updates'] + jax.numpy.where(step == 4, jax.numpy.nan, 1.0)}


def _all_finite(saved):
  return all(np.isfinite(v).all() for v in saved.values() if np.issubdtype(v.dtype, np.inexact))


def test_a_step_that_makes_the_model_or_method_state_nonfinite_is_skipped(tmp_path, monkeypatch):
  monkeypatch.setitem(methods.REGISTRY, 'nan_state', _NaNStateAtSteps3And5)
  config = tiny_config(method='nan_state', num_steps=6, log_every=2, checkpoint_every=2,
                       keep_checkpoints=5, nonfinite='skip')
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  assert results['skipped_steps'] == 2 and results['steps'] == 6
  saved = _saved_state(workdir, 6)
  assert _all_finite(saved)
  assert int(saved['first_skipped']) == 3
  assert float(saved['method_state/updates']) == 4  # Steps 3 and 5 changed nothing.


def _nan_learning_rate(nonfinite):
  """Loss and gradients stay finite; the update (learning rate x gradient) does not."""
  config = tiny_config(nonfinite=nonfinite)
  config.optimizer.learning_rate = float('nan')
  return config


def test_a_nan_learning_rate_stops_at_step_1_saying_there_is_no_checkpoint(tmp_path):
  workdir = str(tmp_path / 'run')
  with pytest.raises(errors.UserError, match='not finite at step 1; .* No checkpoint was written '
                     'yet; a rerun with a lower learning rate starts over'):
    train.train_and_evaluate(_nan_learning_rate('stop'), workdir)
  assert _steps(workdir) == []


def test_a_nan_learning_rate_is_skipped_and_never_saved(tmp_path):
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(_nan_learning_rate('skip'), workdir)
  assert results['skipped_steps'] == 4 and results['steps'] == 4
  assert _all_finite(_saved_state(workdir, 4))


@pytest.mark.parametrize('damage', ['metadata', 'arrays'])
def test_unreadable_latest_checkpoint_is_named_and_the_previous_one_restored(
    tmp_path, damage, caplog):
  config = tiny_config(keep_checkpoints=5)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  os.remove(os.path.join(workdir, train.RESULTS_FILE))
  state_dir = os.path.join(workdir, checkpoint.CHECKPOINT_DIR, '4', 'state')
  if damage == 'metadata':
    os.remove(os.path.join(state_dir, '_METADATA'))
  else:  # Truncate every array file: the metadata reads fine, the arrays do not.
    for root, _, files in os.walk(state_dir):
      for name in files:
        if 'ocdbt' in root or name.startswith('d') or root.endswith('/d'):
          open(os.path.join(root, name), 'w').close()
  caplog.set_level('INFO')
  results = train.train_and_evaluate(config, workdir)
  assert results['steps'] == 4
  assert f'{os.path.join(workdir, checkpoint.CHECKPOINT_DIR, "4")} is unreadable' in caplog.text
  assert 'at step 2.' in caplog.text


def test_checkpoint_of_another_model_is_refused(tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(num_steps=2), workdir)
  other = tiny_config(num_steps=4)
  other.model.width = 0.5
  with pytest.raises(errors.UserError, match='model.width was 0.25, now 0.5; num_steps was 2'):
    train.train_and_evaluate(other, workdir)
  os.remove(os.path.join(workdir, train.CONFIG_FILE))  # Without the record, the arrays tell.
  with pytest.raises(errors.UserError, match="different model or method: '.*' has shape"):
    train.train_and_evaluate(other, workdir)
  assert not os.path.exists(os.path.join(workdir, train.CONFIG_FILE))  # Not written on resume.


def test_unreadable_init_from_checkpoint_is_named(tmp_path):
  source = str(tmp_path / 'source')
  train.train_and_evaluate(tiny_config(num_steps=2), source)
  shutil.rmtree(os.path.join(source, checkpoint.CHECKPOINT_DIR, '2', 'state', 'd'))
  config = tiny_config(num_steps=2)
  config.init_from.update(workdir=source, paths=('backbone',))
  with pytest.raises(errors.UserError, match='init_from: cannot read'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_a_full_disk_while_saving_stops_with_the_last_complete_checkpoint(tmp_path):
  """Files may not grow past 20 KiB (as on a full disk): the first checkpoint cannot be written."""
  workdir = str(tmp_path / 'run')
  process = _main(workdir, ['--config=configs/supervised/digits.py', '--config.num_steps=4',
                            '--config.checkpoint_every=2', '--config.model.width=0.25'],
                  shell_prefix='ulimit -f 20;')
  rc, _, err = _finish(process)
  assert rc == 1
  # One line; Orbax's failing background writers may print tracebacks before it.
  lines = [l for l in err.splitlines() if l.startswith('Error: Could not write a checkpoint to')]
  assert len(lines) == 1, err[-3000:]
  assert 'File too large' in lines[0] and 'last complete checkpoint (none yet)' in lines[0]
  assert _steps(workdir) == []


@pytest.mark.parametrize('flag, message', [
    ('--config.sede=3', "'sede' is not a key of the config (did you mean 'seed'?)"),
    ('--config.optimizer.learnin_rate=1', "'learnin_rate' is not a key of optimizer (did you mean "
                                          "'learning_rate'?)"),
    ('--config.seed=abc', "--config.seed=abc: invalid literal for int()"),
])
def test_bad_override_is_one_line_naming_the_key(tmp_path, flag, message):
  rc, out, err = _finish(_main(tmp_path, ['--config=configs/suave/digits.py', flag]))
  assert rc == 1 and message in err
  assert 'Traceback' not in err and len(err.strip().splitlines()) == 1


def test_config_file_with_a_wrong_type_is_one_line(tmp_path):
  bad = tmp_path / 'bad.py'
  bad.write_text('from semi_ssl import config_base\n\ndef get_config():\n'
                 '  c = config_base.get_base_config()\n  c.num_steps = "many"\n  return c\n')
  rc, _, err = _finish(_main(tmp_path / 'run', [f'--config={bad}']))
  assert rc == 1 and err.startswith(f'Config error: File "{bad}", line 5')
  assert "<class 'str'> and cannot be casted to type <class 'int'>" in err
  assert 'Traceback' not in err and len(err.strip().splitlines()) == 1


def test_config_key_error_finds_the_first_unknown_key():
  config = 'configs/suave/digits.py:with_baseline'
  assert main.config_key_error(['--config.suave.temperature=1'], config) is None
  assert "'temprature' is not a key of suave (did you mean 'temperature'?)" in (
      main.config_key_error(['--config.seed=1', '--config.suave.temprature=1'], config))


def test_resume_under_another_config_is_refused_before_anything_is_restored(tmp_path, monkeypatch):
  config = tiny_config(keep_checkpoints=5)
  workdir = str(tmp_path / 'run')
  first = train.train_and_evaluate(config, workdir)
  records = {name: open(os.path.join(workdir, name)).read()
             for name in (train.CONFIG_FILE, train.SPLIT_FILE)}
  final = _saved_state(workdir, 4)

  def changed(**overrides):
    new = config.copy_and_resolve_references()
    for key, value in overrides.items():
      section, _, name = key.rpartition('.')
      (new[section] if section else new)[name] = value
    return new

  # A finished run (results.json) is not reported again under another config.
  with pytest.raises(errors.UserError, match=r'seed was 0, now 1\. Use a new --workdir'):
    main.run_plan([(changed(seed=1), workdir)])
  assert main.run_plan([(changed(eval_every=3), workdir)])[0]['test_top1'] == first['test_top1']

  # As if killed between steps 2 and 4.
  shutil.rmtree(os.path.join(workdir, checkpoint.CHECKPOINT_DIR, '4'))
  os.remove(os.path.join(workdir, train.RESULTS_FILE))
  with monkeypatch.context() as patch:  # The check comes before data, restore and compile.
    patch.setattr(train.datasets, 'load', lambda config: pytest.fail('loaded the data'))
    for override, message in [
        (dict(seed=1), 'seed was 0, now 1'), (dict(num_steps=8), 'num_steps was 4, now 8'),
        ({'optimizer.learning_rate': 0.05}, 'optimizer.learning_rate was 0.1, now 0.05'),
        (dict(seed=1, num_steps=8, batch_size=32), 'batch_size was 16, now 32; num_steps was 4, '
                                                   'now 8; seed was 0, now 1.')]:
      with pytest.raises(errors.UserError, match=f'{workdir} holds a run that started with other '
                         f'settings .*config.json\\): {message}'):
        train.train_and_evaluate(changed(**override), workdir)
  # The data the run started with changed: refused before the restore.
  split = json.loads(records[train.SPLIT_FILE])
  split['labelled_indices'][0] += 1
  with open(os.path.join(workdir, train.SPLIT_FILE), 'w') as f:
    json.dump(split, f)
  with monkeypatch.context() as patch:
    patch.setattr(checkpoint.Checkpointer, 'restore_latest', lambda *a: pytest.fail('restored'))
    with pytest.raises(errors.UserError, match=r'split.json\): labelled_indices was .*'
                       'point the config at that data'):
      train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, train.SPLIT_FILE), 'w') as f:
    f.write(records[train.SPLIT_FILE])
  assert _steps(workdir) == [2]

  # Evaluating or saving at other steps is allowed: the run ends as it would have.
  again = train.train_and_evaluate(changed(eval_every=3, checkpoint_every=3), workdir)
  assert again['steps'] == 4 and again['test_top1'] == first['test_top1']
  assert _steps(workdir) == [2, 3, 4]
  resumed = _saved_state(workdir, 4)
  for path in final:
    np.testing.assert_array_equal(resumed[path], final[path], err_msg=path)
  for name, text in records.items():  # The records still describe how the run started.
    assert open(os.path.join(workdir, name)).read() == text, name
