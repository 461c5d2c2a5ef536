"""One run per workdir: the lease is taken, refused, taken over when stale, renewed, released
only by its owner, won by exactly one of several contenders, lost and noticed; also on gs://
and between processes; and two real runs started in one workdir do not mix their records."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils

from helpers import checkpoint_steps, finish, start_main, tiny_config, wait_for
from semi_ssl import errors, train, workdir_lease
from semi_ssl.workdir_lease import LEASE_FILE, WorkdirLease


def _write_lease(directory, host='elsewhere', pid=4242, age=0.0, token='other'):
  """A lease of another run, renewed `age` seconds ago."""
  now = time.time()
  os.makedirs(directory, exist_ok=True)
  record = {'host': host, 'pid': pid, 'started': now - 3600, 'token': token, 'renewed': now - age}
  with open(os.path.join(directory, LEASE_FILE), 'w') as f:
    json.dump(record, f)
  return record


def _read_lease(directory):
  with open(os.path.join(directory, LEASE_FILE)) as f:
    return json.load(f)


def test_the_lease_names_its_holder_and_is_deleted_on_release(tmp_path):
  with WorkdirLease(tmp_path / 'run') as lease:
    record = _read_lease(tmp_path / 'run')
    assert record['host'] == socket.gethostname() and record['pid'] == os.getpid()
    assert record['token'] == lease.token and record['renewed'] >= record['started']
  assert os.listdir(tmp_path / 'run') == []


def test_a_live_holder_refuses_a_second_run_naming_it(tmp_path):
  _write_lease(tmp_path, age=10)
  with pytest.raises(
    errors.UserError,
    match=f'^{re.escape(str(tmp_path))} is in use by another '
    r'run \(host elsewhere, pid 4242, started .*, last renewed \d+ s ago\): '
    'wait for it to finish, stop it, or use another --workdir',
  ):
    WorkdirLease(tmp_path).acquire()
  with WorkdirLease(tmp_path / 'mine'):  # A live process on this host: this one.
    with pytest.raises(errors.UserError, match=f'host {socket.gethostname()}, pid {os.getpid()}'):
      WorkdirLease(tmp_path / 'mine').acquire()
  assert _read_lease(tmp_path)['token'] == 'other'


def test_a_stale_lease_is_taken_over_with_a_warning_naming_the_old_holder(tmp_path, caplog):
  _write_lease(tmp_path, age=10)
  with pytest.raises(errors.UserError, match='in use'):
    WorkdirLease(tmp_path, stale_seconds=20).acquire()
  with WorkdirLease(tmp_path, stale_seconds=5) as lease:
    assert _read_lease(tmp_path)['token'] == lease.token
  assert re.search(r'has not renewed it for \d+ s \(host elsewhere, pid 4242', caplog.text)


def test_a_takeover_claim_left_by_a_dead_contender_is_removed(tmp_path, monkeypatch):
  stale = _write_lease(tmp_path, age=100)
  monkeypatch.setattr(workdir_lease, '_CLAIM_SECONDS', 0.1)
  (tmp_path / workdir_lease.claim_name(stale)).write_text('')  # Its contender died.
  with WorkdirLease(tmp_path, stale_seconds=50) as lease:
    assert _read_lease(tmp_path)['token'] == lease.token
  assert os.listdir(tmp_path) == []


def test_the_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path, caplog):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  _write_lease(tmp_path, host=socket.gethostname(), pid=dead.pid, age=0)
  with WorkdirLease(tmp_path) as lease:
    assert _read_lease(tmp_path)['token'] == lease.token
  assert f'is no longer running (host {socket.gethostname()}, pid {dead.pid}' in caplog.text


def test_release_deletes_only_its_own_lease(tmp_path):
  lease = WorkdirLease(tmp_path)
  lease.acquire()
  _write_lease(tmp_path, token='successor')
  lease.release()
  assert _read_lease(tmp_path)['token'] == 'successor'


@pytest.mark.parametrize('existing', ['none', 'stale'])
def test_of_contenders_started_together_exactly_one_holds_the_lease(tmp_path, existing):
  if existing == 'stale':
    _write_lease(tmp_path, age=100)
  contenders = [WorkdirLease(tmp_path, stale_seconds=50) for _ in range(8)]
  start, outcomes = threading.Barrier(len(contenders)), {}

  def contend(lease):
    start.wait()
    try:
      lease.acquire()
      outcomes[lease.token] = 'held'
    except errors.UserError as refused:
      outcomes[lease.token] = str(refused)

  threads = [threading.Thread(target=contend, args=(lease,)) for lease in contenders]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  winners = [token for token, outcome in outcomes.items() if outcome == 'held']
  assert len(winners) == 1 and _read_lease(tmp_path)['token'] == winners[0]
  assert all(f'pid {os.getpid()}' in o for o in outcomes.values() if o != 'held')
  assert os.listdir(tmp_path) == [LEASE_FILE]  # No temporary or moved file left behind.
  for lease in contenders:
    lease.release()
  assert os.listdir(tmp_path) == []


def test_a_gcs_lease_is_taken_refused_taken_over_and_released(tmp_path, monkeypatch, gcs_on_disk):
  monkeypatch.chdir(tmp_path)  # The URL taken for a local path would make ./gs:/bucket/run.
  on_disk = gcs_on_disk / 'bucket' / 'run'
  with WorkdirLease('gs://bucket/run', settle_seconds=0) as lease:
    assert _read_lease(on_disk)['token'] == lease.token
    with pytest.raises(errors.UserError, match='gs://bucket/run is in use by another run'):
      WorkdirLease('gs://bucket/run', settle_seconds=0).acquire()
  assert not on_disk.joinpath(LEASE_FILE).exists()
  _write_lease(on_disk, age=100)
  with WorkdirLease('gs://bucket/run', settle_seconds=0, stale_seconds=50) as lease:
    assert _read_lease(on_disk)['token'] == lease.token
  assert not on_disk.joinpath(LEASE_FILE).exists() and not (tmp_path / 'gs:').exists()


def test_a_gcs_contender_that_is_overwritten_backs_off(tmp_path, monkeypatch, gcs_on_disk):
  monkeypatch.chdir(tmp_path)
  on_disk = gcs_on_disk / 'bucket' / 'run'
  lease = WorkdirLease('gs://bucket/run', settle_seconds=0)
  # Another contender's write lands while this one settles.
  monkeypatch.setattr(workdir_lease.time, 'sleep', lambda s: _write_lease(on_disk, host='quick'))
  with pytest.raises(errors.UserError, match='in use by another run \\(host quick'):
    lease.acquire()
  assert _read_lease(on_disk)['host'] == 'quick'


def test_the_holder_renews_the_lease(tmp_path):
  with WorkdirLease(tmp_path, renew_seconds=0.01) as lease:
    first = _read_lease(tmp_path)['renewed']
    deadline = time.time() + 60
    while _read_lease(tmp_path)['renewed'] == first:
      assert time.time() < deadline, 'never renewed'
      time.sleep(0.01)
    assert _read_lease(tmp_path)['token'] == lease.token


def test_a_lost_lease_is_noticed_and_left_to_the_new_holder(tmp_path):
  with WorkdirLease(tmp_path, stale_seconds=60) as lease:
    lease.check()  # Still its own.
    _write_lease(tmp_path, host='thief', pid=77)
    with pytest.raises(
      errors.UserError,
      match=f'Another run took {re.escape(str(tmp_path))} over '
      r'\(host thief, pid 77, .*\) after this run had not renewed its lease for '
      '60 s',
    ):
      lease.check()
  assert _read_lease(tmp_path)['host'] == 'thief'


def test_a_run_that_lost_its_lease_saves_no_checkpoint(tmp_path):
  workdir = str(tmp_path / 'run')
  with pytest.raises(errors.UserError, match='host thief'):
    with workdir_lease.hold(workdir, needed=True):
      _write_lease(workdir, host='thief')  # Taken over before the first save.
      train.train_and_evaluate(tiny_config(num_steps=2), workdir)
  assert checkpoint_steps(workdir) == [] and _read_lease(workdir)['host'] == 'thief'
  workdir_lease.check_held()  # Outside `hold`: nothing to check.


def _as_process_1(monkeypatch, said_by_process_0):
  """This process as process 1 of 2, receiving `said_by_process_0` (one message per collective)."""
  messages = iter(said_by_process_0)

  def broadcast(data):
    assert data.shape == (workdir_lease._MESSAGE_BYTES,)
    text = next(messages).encode()
    return np.pad(np.frombuffer(text, np.uint8), (0, data.size - len(text)))

  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  monkeypatch.setattr(multihost_utils, 'broadcast_one_to_all', broadcast)


def test_every_process_learns_the_outcome_from_process_0(tmp_path, monkeypatch):
  refusal = f'{tmp_path} is in use by another run (host elsewhere, pid 4242, ...)'
  _as_process_1(monkeypatch, [refusal])
  with pytest.raises(errors.UserError) as refused:
    with workdir_lease.hold(str(tmp_path), needed=True):
      pytest.fail('ran without the lease')
  assert str(refused.value) == refusal
  _as_process_1(monkeypatch, ['held', '', 'Another run took it over'])
  with pytest.raises(errors.UserError, match='^Another run took it over$'):
    with workdir_lease.hold(str(tmp_path), needed=True):
      workdir_lease.check_held()
      workdir_lease.check_held()
  assert os.listdir(tmp_path) == []  # Only process 0 touches the lease.


def test_a_second_run_in_the_same_workdir_is_refused_naming_the_first(tmp_path):
  workdir = str(tmp_path / 'run')
  flags = [
    '--config=configs/supervised/digits.py',
    '--config.num_steps=4',
    '--config.model.width=0.25',
    '--config.eval_every=100',
    '--config.checkpoint_every=2',
  ]
  first = start_main(workdir, flags)
  lease = os.path.join(workdir, LEASE_FILE)
  wait_for(lambda: os.path.exists(lease), first)
  first.send_signal(signal.SIGSTOP)  # Holds the lease, still alive, until SIGCONT.
  try:
    rc, _, err = finish(start_main(workdir, flags + ['--config.seed=1']))
  finally:
    first.send_signal(signal.SIGCONT)
  assert rc == 1, err[-3000:]
  assert (
    err.strip()
    .splitlines()[-1]
    .startswith(
      f'Error: {workdir} is in use by another run (host {socket.gethostname()}, pid {first.pid}, '
      'started '
    )
  ), err[-3000:]
  assert 'Traceback' not in err
  rc, _, err = finish(first)
  assert rc == 0, err[-3000:]
  for name in (train.CONFIG_FILE, train.RESULTS_FILE):
    with open(os.path.join(workdir, name)) as f:
      assert json.load(f)['seed'] == 0, name
  assert checkpoint_steps(workdir) == [2, 4] and not os.path.exists(lease)
