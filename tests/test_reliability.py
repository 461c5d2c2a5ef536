"""Faults: preemption (SIGTERM, SIGKILL), divergence, broken or foreign checkpoints, full disk,
bad config keys. Each test provokes the fault for real and checks what the program does."""
import inspect
import json
import os
import re
import shutil
import signal
import types

import chex
import jax
import numpy as np
import pytest
from etils import epath
from flax import nnx

from helpers import checkpoint_steps, finish, saved_state, start_main, tiny_config, wait_for
from semi_ssl import checkpoint, errors, main, methods, notices, train
from semi_ssl.methods import supervised

# A small Suave run with every piece of state a resume must restore: EMA teacher, queue,
# optimiser momentum, data position, PRNG key.
SUAVE_FLAGS = ['--config=configs/suave/digits.py', '--config.num_steps=40',
               '--config.batch_size=32', '--config.labelled_batch_size=16',
               '--config.model.width=0.25', '--config.log_every=5', '--config.eval_every=1000',
               '--config.checkpoint_every=10', '--config.keep_checkpoints=10',
               '--config.suave.queue_size=64', '--config.suave.ema_momentum=0.9',
               '--config.augment.num_local_crops=0']  # Fewer crops: a quicker compile.


# The main command, but the process stops itself (SIGSTOP) as soon as it has started the
# (asynchronous) save of step {step}: killed there, it dies in the middle of that write or
# just after it, wherever the writer threads are.
STOP_AFTER_SAVE = """
import os, runpy, signal
from semi_ssl import checkpoint
save = checkpoint.Checkpointer.save
def save_then_stop(self, step, *args, **kwargs):
  save(self, step, *args, **kwargs)
  if step == {step}:
    os.kill(os.getpid(), signal.SIGSTOP)
checkpoint.Checkpointer.save = save_then_stop
runpy.run_module('semi_ssl.main', run_name='__main__', alter_sys=True)
"""


def _stopped(process):
  """Whether `process` is stopped (SIGSTOP); reaps it if it ended."""
  pid, status = os.waitpid(process.pid, os.WUNTRACED | os.WNOHANG)
  return pid != 0 and os.WIFSTOPPED(status)


def test_sigkill_then_rerun_is_bit_identical_to_an_uninterrupted_run(tmp_path):
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  rc, _, err = finish(start_main(straight, SUAVE_FLAGS))
  assert rc == 0, err[-3000:]

  process = start_main(killed, SUAVE_FLAGS, entry=('-c', STOP_AFTER_SAVE.format(step=30)))
  wait_for(lambda: _stopped(process), process)
  process.send_signal(signal.SIGKILL)  # Step 20 is saved, step 30 being written or just done.
  assert finish(process)[0] == -signal.SIGKILL
  assert not os.path.exists(os.path.join(killed, train.RESULTS_FILE))
  saved = checkpoint_steps(killed)
  assert saved in ([10, 20], [10, 20, 30])
  rc, _, err = finish(start_main(killed, SUAVE_FLAGS))
  assert rc == 0, err[-3000:]
  assert f'at step {saved[-1]}.' in err and 'Resumed from' in err, err[-3000:]

  expected = saved_state(straight, 40)
  assert {'queue', 'teacher'} <= set(expected['method_state'])
  chex.assert_trees_all_equal(saved_state(killed, 40), expected)
  results = [json.load(open(os.path.join(d, train.RESULTS_FILE))) for d in (straight, killed)]
  assert results[0]['test_top1'] == results[1]['test_top1']
  assert results[0]['knn_top1'] == results[1]['knn_top1']


def test_sigterm_saves_at_the_next_step_and_exits_zero(tmp_path):
  workdir = str(tmp_path / 'run')
  flags = SUAVE_FLAGS + ['--config.num_steps=100000', '--config.checkpoint_every=100000']
  process = start_main(workdir, flags)
  wait_for(lambda: os.path.exists(os.path.join(workdir, 'tensorboard')) and
            any(os.path.getsize(os.path.join(workdir, 'tensorboard', f)) > 200
                for f in os.listdir(os.path.join(workdir, 'tensorboard'))), process)
  process.send_signal(signal.SIGTERM)
  rc, out, err = finish(process)
  assert rc == 0, err[-3000:]
  assert 'Preempted: stopped at step' in out and (out + err).count(RESUME_HINT) == 1
  step = int(out.split('stopped at step ')[1].split()[0])
  assert checkpoint_steps(workdir) == [step] and 0 < step < 100000
  assert int(saved_state(workdir, step)['step']) == step


# A tiny supervised run that trains until a signal stops it.
ENDLESS_FLAGS = ['--config=configs/supervised/digits.py', '--config.model.width=0.25',
                 '--config.labelled_batch_size=16', '--config.num_steps=100000',
                 '--config.checkpoint_every=100000', '--config.log_every=2',
                 '--config.eval_every=100000']
RESUME_HINT = 'run the same command to resume'


def _has_logged(workdir):
  directory = os.path.join(workdir, 'tensorboard')
  return os.path.isdir(directory) and any(os.path.getsize(os.path.join(directory, f)) > 200
                                          for f in os.listdir(directory))


def test_ctrl_c_saves_and_exits_130_and_a_second_ctrl_c_stops_at_once(tmp_path):
  workdir = str(tmp_path / 'run')
  process = start_main(workdir, ENDLESS_FLAGS)
  wait_for(lambda: _has_logged(workdir), process)
  process.send_signal(signal.SIGINT)
  rc, out, err = finish(process)
  assert rc == 130, err[-3000:]
  assert 'Traceback' not in err and 'KeyboardInterrupt' not in err
  assert (out + err).count(RESUME_HINT) == 1, out + err[-3000:]
  step = int(out.split('Interrupted: stopped at step ')[1].split()[0])
  assert checkpoint_steps(workdir) == [step] and int(saved_state(workdir, step)['step']) == step

  # Twice, while the run starts: the first Ctrl-C is acknowledged, the second stops it at once.
  workdir = str(tmp_path / 'again')
  process = start_main(workdir, ENDLESS_FLAGS)
  wait_for(lambda: os.path.isdir(workdir), process)  # main handles Ctrl-C by then.
  process.send_signal(signal.SIGINT)
  seen = ''
  while 'Ctrl-C: stopping at the next step boundary' not in seen:
    line = process.stderr.readline()
    assert line, seen[-3000:]
    seen += line
  process.send_signal(signal.SIGINT)
  rc, out, err = finish(process)
  assert rc == 130, err[-3000:]
  assert err.strip().splitlines()[-1] == (
      'Interrupted again: stopped before training started; nothing was lost.'), err[-3000:]
  assert 'Traceback' not in err and err.count('Interrupted') == 1
  assert out == '' and checkpoint_steps(workdir) == []


def test_second_ctrl_c_names_the_last_complete_checkpoint(tmp_path):
  notice = notices.Notice()
  notice.checkpoint_dir = tmp_path / checkpoint.CHECKPOINT_DIR
  assert notice._last_checkpoint().endswith(f'checkpoint is none yet in {tmp_path}/checkpoints.')
  for name in ('2', '10', '12.orbax-checkpoint-tmp-1', '4.unreadable-1'):
    (tmp_path / checkpoint.CHECKPOINT_DIR / name).mkdir(parents=True)
  assert notice._last_checkpoint() == (
      f'stopped without saving; the last complete checkpoint is step 10 in {tmp_path}/checkpoints.')


def test_sigterm_while_starting_stops_with_one_message_and_the_rerun_finishes(tmp_path):
  """Whenever the notice lands (loading, compiling, or already training), the run stops with
  one message and exit 0; the same command then finishes the run."""
  workdir = str(tmp_path / 'run')
  flags = ENDLESS_FLAGS + ['--config.num_steps=6']
  process = start_main(workdir, flags)
  wait_for(lambda: os.path.isdir(workdir), process)  # main handles SIGTERM by then.
  process.send_signal(signal.SIGTERM)
  rc, out, err = finish(process)
  assert rc == 0, err[-3000:]
  assert (out + err).count(RESUME_HINT) == 1 and out.startswith('Preempted'), out + err[-3000:]
  rc, out, err = finish(start_main(workdir, flags))
  assert rc == 0, err[-3000:]
  assert json.load(open(os.path.join(workdir, train.RESULTS_FILE)))['steps'] == 6


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
  assert checkpoint_steps(workdir) == [2]  # Nothing was saved after the bad step.


def test_nonfinite_loss_is_skipped_when_the_config_says_so(tmp_path, nan_method):
  nan_method.nonfinite = 'skip'
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(nan_method, workdir)
  assert results['skipped_steps'] == 1 and results['steps'] == 6
  before, after = saved_state(workdir, 2), saved_state(workdir, 4)
  assert _all_finite(after['params'])
  assert any(not np.array_equal(new, old) for new, old in zip(jax.tree.leaves(after['params']),
                                                               jax.tree.leaves(before['params'])))
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
  return all(np.isfinite(v).all() for v in jax.tree.leaves(saved)
             if np.issubdtype(v.dtype, np.inexact))


def test_a_step_that_makes_the_model_or_method_state_nonfinite_is_skipped(tmp_path, monkeypatch):
  monkeypatch.setitem(methods.REGISTRY, 'nan_state', _NaNStateAtSteps3And5)
  config = tiny_config(method='nan_state', num_steps=6, log_every=2, checkpoint_every=2,
                       keep_checkpoints=5, nonfinite='skip')
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  assert results['skipped_steps'] == 2 and results['steps'] == 6
  saved = saved_state(workdir, 6)
  assert _all_finite(saved)
  assert int(saved['first_skipped']) == 3
  assert float(saved['method_state']['updates']) == 4  # Steps 3 and 5 changed nothing.


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
  assert checkpoint_steps(workdir) == []


def test_a_nan_learning_rate_is_skipped_and_never_saved(tmp_path):
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(_nan_learning_rate('skip'), workdir)
  assert results['skipped_steps'] == 4 and results['steps'] == 4
  assert _all_finite(saved_state(workdir, 4))


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """A finished tiny run with checkpoints at steps 2 and 4: copy it before changing it."""
  workdir = str(tmp_path_factory.mktemp('finished') / 'run')
  train.train_and_evaluate(tiny_config(keep_checkpoints=5), workdir)
  return workdir


def _copy_of(run, tmp_path):
  copy = str(tmp_path / 'run')
  shutil.copytree(run, copy)
  return copy


def _remove_state_metadata(step_dir, scratch):
  os.remove(os.path.join(step_dir, 'state', '_METADATA'))


def _truncate_array_files(step_dir, scratch):
  """Every array file emptied: the metadata reads fine, the arrays do not."""
  for root, _, files in os.walk(os.path.join(step_dir, 'state')):
    for name in files:
      if 'ocdbt' in root or name.startswith('d') or root.endswith('/d'):
        open(os.path.join(root, name), 'w').close()


def _flip_a_byte_of_array_data(step_dir, scratch):
  """Flips one byte of the step's array data (the files of state/ocdbt.process_0/d: compressed
  chunks of the arrays too large to sit in the b-tree, then bytes no longer read), one that
  reads back without an error as a changed array, as most bytes of the chunks do."""
  state_dir = os.path.join(step_dir, 'state')
  data_dir = os.path.join(state_dir, 'ocdbt.process_0', 'd')
  files = sorted(os.listdir(data_dir), key=lambda f: -os.path.getsize(os.path.join(data_dir, f)))
  original = checkpoint._flatten(checkpoint.read_state(state_dir))
  for attempt, (name, fraction) in enumerate(
      (name, fraction) for name in files[:3] for fraction in (0.02, 0.05, 0.1, 0.2)):
    trial = os.path.join(scratch, str(attempt))  # A new path each time: TensorStore caches.
    shutil.copytree(state_dir, trial)
    path = os.path.join(trial, 'ocdbt.process_0', 'd', name)
    data = bytearray(open(path, 'rb').read())
    data[int(len(data) * fraction)] ^= 0x10
    open(path, 'wb').write(data)
    try:
      changed = checkpoint._flatten(checkpoint.read_state(trial))
    except Exception:  # pylint: disable=broad-except
      continue
    if any(not np.array_equal(changed[p], original[p]) for p in original):
      shutil.copy(path, os.path.join(data_dir, name))
      return
  pytest.fail(f'no byte tried in {data_dir} reads back as a changed array')


def _replace_record(step_dir, scratch):
  with open(os.path.join(step_dir, 'record', 'metadata'), 'w') as f:
    f.write('{"steps": 4}')


def _edit_record(step_dir, scratch):
  """The saved wall time changed by hand."""
  path = os.path.join(step_dir, 'record', 'metadata')
  text = open(path).read()
  with open(path, 'w') as f:
    f.write(re.sub(r'("wall_seconds": )[-+.e0-9]+', r'\g<1>1.5', text))


# Damage to step 4 of `finished_run` and what the warning must name.
DAMAGES = {'state metadata removed': (_remove_state_metadata, ''),
           'array files truncated': (_truncate_array_files, ''),
           'a byte of array data flipped': (_flip_a_byte_of_array_data, "checksum of '"),
           'record replaced': (_replace_record, ''),
           'record edited': (_edit_record, 'its record is not the one written')}


@pytest.mark.parametrize('damage', DAMAGES)
def test_unreadable_latest_checkpoint_is_set_aside_and_the_previous_one_restored(
    finished_run, tmp_path, damage, caplog):
  workdir = _copy_of(finished_run, tmp_path)
  os.remove(os.path.join(workdir, train.RESULTS_FILE))
  step_dir = os.path.join(workdir, checkpoint.CHECKPOINT_DIR, '4')
  damage_fn, reason = DAMAGES[damage]
  damage_fn(step_dir, str(tmp_path / 'scratch'))
  caplog.set_level('INFO')
  results = train.train_and_evaluate(tiny_config(keep_checkpoints=5), workdir)
  assert results['steps'] == 4
  warning = [r.getMessage() for r in caplog.records if 'is unreadable' in r.getMessage()]
  assert len(warning) == 1 and warning[0].startswith(f'Checkpoint {step_dir} is unreadable (')
  assert reason in warning[0] and '\n' not in warning[0] and len(warning[0]) < 500
  assert 'at step 2.' in caplog.text
  assert [d for d in os.listdir(os.path.dirname(step_dir)) if d.startswith('4.unreadable-')]


def test_a_clean_checkpoint_passes_its_checksums(finished_run, tmp_path, caplog):
  workdir = _copy_of(finished_run, tmp_path)
  os.remove(os.path.join(workdir, train.RESULTS_FILE))
  caplog.set_level('INFO')
  results = train.train_and_evaluate(tiny_config(keep_checkpoints=5), workdir)
  assert results['steps'] == 4 and 'at step 4.' in caplog.text
  assert 'unreadable' not in caplog.text and checkpoint_steps(workdir) == [2, 4]


def test_a_checkpoint_from_before_checksums_still_resumes(finished_run, tmp_path, caplog):
  workdir = _copy_of(finished_run, tmp_path)
  os.remove(os.path.join(workdir, train.RESULTS_FILE))
  with open(os.path.join(workdir, checkpoint.CHECKPOINT_DIR, '4', 'record', 'metadata'), 'w') as f:
    f.write('{"wall_seconds": 3.5}')  # The record as the code before checksums wrote it.
  caplog.set_level('INFO')
  results = train.train_and_evaluate(tiny_config(keep_checkpoints=5), workdir)
  assert results['steps'] == 4 and 'at step 4.' in caplog.text
  assert 'written before checksums were kept' in caplog.text and 'unreadable' not in caplog.text


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


def _remove_array_directory(step_dir, scratch):
  shutil.rmtree(os.path.join(step_dir, 'state', 'd'))


@pytest.mark.parametrize('damage', [_remove_array_directory, _flip_a_byte_of_array_data])
def test_unreadable_init_from_checkpoint_is_named(finished_run, tmp_path, damage):
  source = _copy_of(finished_run, tmp_path)
  damage(os.path.join(source, checkpoint.CHECKPOINT_DIR, '4'), str(tmp_path / 'scratch'))
  config = tiny_config(num_steps=2)
  config.init_from.update(workdir=source, paths=('backbone',))
  with pytest.raises(errors.UserError, match=r'init_from: cannot read .*/4/state \(.+\); re-run '
                     'the source run or point config.init_from.workdir elsewhere.') as error:
    train.train_and_evaluate(config, str(tmp_path / 'target'))
  assert '\n' not in str(error.value) and len(str(error.value)) < 500


def test_a_full_disk_while_saving_stops_with_the_last_complete_checkpoint(tmp_path):
  """Files may not grow past 20 KiB (as on a full disk): the first checkpoint cannot be written."""
  workdir = str(tmp_path / 'run')
  process = start_main(workdir, ['--config=configs/supervised/digits.py', '--config.num_steps=4',
                            '--config.checkpoint_every=2', '--config.model.width=0.25'],
                  # No compilation cache: its entries would be truncated for the later tests.
                  shell_prefix='ulimit -f 20; unset JAX_COMPILATION_CACHE_DIR;')
  rc, _, err = finish(process)
  assert rc == 1
  # One line after the progress log: not Orbax's failing background writers' tracebacks.
  lines = err.splitlines()
  assert lines[-1].startswith('Error: Could not write a checkpoint to'), err[-3000:]
  assert 'File too large' in lines[-1] and 'last complete checkpoint (none yet)' in lines[-1]
  progress = [i for i, line in enumerate(lines) if re.search(r'\] step \d+/4 ', line)]
  assert progress and len(lines) - progress[-1] <= 3, err[-3000:]
  assert 'Traceback' not in err and 'Could not write' not in '\n'.join(lines[:-1]), err[-3000:]
  assert checkpoint_steps(workdir) == []


def test_leftovers_of_a_failed_orbax_read_or_write_are_dropped_other_unraisables_kept():
  """What `sys.unraisablehook` gets after a failed save or restore: TensorStore's callbacks into
  Orbax's closed event loop, and the errors of Orbax's pending reads (a TensorStore spec each)."""
  from orbax.checkpoint._src.serialization import serialization
  read = serialization._read_array_index_and_device_put
  pending_read = read(**{name: None for name in inspect.signature(read).parameters})
  kept = []
  hook = checkpoint._FailedIoLeftovers(kept.append)
  unraisable = lambda error, source: types.SimpleNamespace(exc_value=error, object=source)
  hook(unraisable(RuntimeError('Event loop is closed'), None))
  hook(unraisable(Exception('Encountered error while reading array index'), pending_read))
  assert not kept
  hook(unraisable(RuntimeError('Event loop is closed!'), None))
  hook(unraisable(ValueError('unrelated'), None))
  assert [str(u.exc_value) for u in kept] == ['Event loop is closed!', 'unrelated']
  pending_read.close()


def test_a_finished_run_is_reported_from_a_read_only_workdir(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  plan = main.stage_plan(tiny_config(), workdir)
  monkeypatch.setattr(os, 'access', lambda *args, **kwargs: False)  # Root ignores chmod.
  with pytest.raises(ValueError, match='is not writable'):
    main.validate_plan(plan, workdir, num_devices=1)
  open(os.path.join(workdir, train.RESULTS_FILE), 'w').close()
  main.validate_plan(plan, workdir, num_devices=1)  # Finished: nothing will be written.


def test_a_workdir_in_a_missing_bucket_is_one_line(monkeypatch, gcs_on_disk):
  check = lambda workdir: main.validate_plan(main.stage_plan(tiny_config(), workdir), workdir,
                                             num_devices=1)
  with pytest.raises(ValueError, match=r'^--workdir=gs://nobucket/run: the bucket gs://nobucket '
                     r'does not exist: create it \(gcloud storage buckets create gs://nobucket\) or'):
    check('gs://nobucket/run')
  (gcs_on_disk / 'bucket').mkdir(parents=True)
  check('gs://bucket/run')
  gs_path = type(epath.Path('gs://bucket'))

  def unreachable(path):
    raise PermissionError('403 Forbidden: no storage.buckets.get access\nmore lines')
  monkeypatch.setattr(gs_path, 'exists', unreachable)
  with pytest.raises(ValueError, match=r'^--workdir=gs://bucket/run: cannot reach gs://bucket '
                     r'\(PermissionError: 403 Forbidden: no storage.buckets.get access\): check'):
    check('gs://bucket/run')


@pytest.mark.parametrize('flag, message', [
    ('--config.sede=3', "'sede' is not a key of the config (did you mean 'seed'?)"),
    ('--config.optimizer.learnin_rate=1', "'learnin_rate' is not a key of optimizer (did you mean "
                                          "'learning_rate'?)"),
    ('--config.seed=abc', "--config.seed=abc: invalid literal for int()"),
])
def test_bad_override_is_one_line_naming_the_key(tmp_path, flag, message):
  rc, out, err = finish(start_main(tmp_path, ['--config=configs/suave/digits.py', flag]))
  assert rc == 1 and message in err
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
  final = saved_state(workdir, 4)

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
  assert checkpoint_steps(workdir) == [2]

  # Evaluating or saving at other steps is allowed: the run ends as it would have.
  again = train.train_and_evaluate(changed(eval_every=3, checkpoint_every=3), workdir)
  assert again['steps'] == 4 and again['test_top1'] == first['test_top1']
  assert checkpoint_steps(workdir) == [2, 3, 4]
  chex.assert_trees_all_equal(saved_state(workdir, 4), final)
  for name, text in records.items():  # The records still describe how the run started.
    assert open(os.path.join(workdir, name)).read() == text, name
