"""Several processes through jax.distributed on 127.0.0.1 (CPU collectives) give the results
of one process: input shards, Sinkhorn, kNN, and a few train steps of Suave."""

import os
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from semi_ssl import parallel
from semi_ssl.data import datasets, pipeline
from semi_ssl.ops import knn, sinkhorn
from distributed_worker import knn_inputs
from helpers import REPO, cpu_env, saved_state, tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_group(commands, devices_per_process=1, timeout=400):
  """Runs one command per process, all at once; fails with the stderr of a failed one."""
  processes = [
    subprocess.Popen(
      c,
      cwd=REPO,
      env=cpu_env(devices_per_process),
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
    )
    for c in commands
  ]
  outputs = [p.communicate(timeout=timeout) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  return outputs


@pytest.mark.parametrize('num_processes', [2, 4])
def test_process_rows_are_disjoint_and_make_up_the_global_batch(monkeypatch, num_processes):
  splits = datasets.load(tiny_config())
  kwargs = dict(seed=0, labelled_batch_size=16, batch_size=32)
  whole = [pipeline.host_batch(splits, step, **kwargs) for step in range(3)]
  monkeypatch.setattr(jax, 'process_count', lambda: num_processes)
  for step in range(3):
    parts = []
    for index in range(num_processes):
      monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
      parts.append(pipeline.host_batch(splits, step, **kwargs))
    for stream in ('labelled', 'unlabelled'):
      joined = np.concatenate([p[stream]['images'] for p in parts])
      np.testing.assert_array_equal(joined, whole[step][stream]['images'])
    np.testing.assert_array_equal(
      np.concatenate([p['labelled']['labels'] for p in parts]), whole[step]['labelled']['labels']
    )


def test_ops_across_two_processes_equal_one_process(tmp_path):
  coordinator = f'127.0.0.1:{_free_port()}'
  _run_group(
    [
      [
        sys.executable,
        os.path.join(HERE, 'distributed_worker.py'),
        str(tmp_path),
        coordinator,
        '2',
        str(i),
      ]
      for i in range(2)
    ]
  )
  scores = np.random.default_rng(0).normal(size=(32, 10)).astype(np.float32) * 5
  expected = np.asarray(sinkhorn.sinkhorn(scores))
  labels, votes = knn.knn_pseudo_labels(*knn_inputs(), k=5, num_classes=4)
  for i in range(2):
    out = np.load(tmp_path / f'process_{i}.npz')
    np.testing.assert_allclose(out['sinkhorn_jit'], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out['sinkhorn_shard_map'], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(out['knn_labels'], labels)
    np.testing.assert_allclose(out['knn_votes'], votes, rtol=1e-6)


def test_training_in_two_processes_equals_one_process(tmp_path):
  """Same global batch: two processes with a device each vs one process with two devices.

  Suave, so that the Sinkhorn sums run across processes inside the train step."""
  flags = [
    '--config=configs/suave/digits.py',
    '--config.num_steps=6',
    '--config.batch_size=32',
    '--config.labelled_batch_size=16',
    '--config.model.width=0.25',
    '--config.augment.num_local_crops=0',
    '--config.log_every=3',
    '--config.eval_every=100',
    '--config.checkpoint_every=6',
  ]
  main = [sys.executable, '-m', 'semi_ssl.main']
  one, two = tmp_path / 'one', tmp_path / 'two'
  coordinator = f'127.0.0.1:{_free_port()}'
  _run_group(
    [
      main
      + flags
      + [
        f'--workdir={two}',
        f'--coordinator_address={coordinator}',
        '--num_processes=2',
        f'--process_id={i}',
      ]
      for i in range(2)
    ]
  )
  _run_group([main + flags + [f'--workdir={one}']], devices_per_process=2)
  chex.assert_trees_all_close(
    saved_state(str(two), 6), saved_state(str(one), 6), rtol=1e-4, atol=1e-5
  )
  assert (two / 'results.json').exists()


def test_partial_distributed_flags_are_refused():
  with pytest.raises(ValueError, match='--num_processes and --process_id missing'):
    parallel.initialize('127.0.0.1:1234')
  with pytest.raises(ValueError, match=r'--process_id=2 must be in \[0, --num_processes=2\)'):
    parallel.initialize('127.0.0.1:1234', 2, 2)
