"""What every method owes the trainer: its step on 8 devices equals its step on 1 (loss,
parameters, model state, method state, optimiser state), its whole train state survives a save
and a restore bit-exactly, its step is traced and compiled once, and (Daino) a run resumed
from a checkpoint ends where the run straight through ends. A staged method's stages are
entries 'method:stage'; SimCLRv2's distill stage is left out: its frozen teacher is read from a
finetune checkpoint, a run of its own (tests/test_simclrv2.py runs the three stages)."""

import dataclasses
import functools
from typing import Any, Callable

import chex
import jax
import numpy as np
import pytest
from jax.sharding import Mesh

import helpers
import test_references
from semi_ssl import checkpoint, parallel, train
from semi_ssl.data import augment, datasets, pipeline

METHODS = (
  'supervised',
  'suave',
  'daino',
  'semppl',
  'simclrv2:pretrain',
  'simclrv2:memory',
  'simclrv2:finetune',
  's4l:rotation',
  's4l:exemplar',
  's4l:vat_entmin',
  's4l:moam',
  'sela',
)
# Beyond the tiny config: every piece of method state in use (Suave's EMA teacher and a queue
# that is full from the second step on), or the stage of a staged method.
_OVERRIDES = {
  'suave': dict(suave=dict(ema_momentum=0.9, queue_size=16)),
  'simclrv2:pretrain': dict(simclrv2=dict(stage='pretrain')),
  # Pretraining with a memory of negatives that is full from the second step on (64 keys a step).
  'simclrv2:memory': dict(simclrv2=dict(stage='pretrain', memory_size=64, memory_momentum=0.9)),
  'simclrv2:finetune': dict(simclrv2=dict(stage='finetune')),  # From scratch: no init_from.
  # One random rotation per image: its key split over the devices too ('all' is the default).
  's4l:rotation': dict(s4l=dict(variant='rotation', rotations='random')),
  's4l:exemplar': dict(s4l=dict(variant='exemplar')),
  's4l:vat_entmin': dict(s4l=dict(variant='vat_entmin')),
  's4l:moam': dict(s4l=dict(variant='moam')),  # Its joint stage: rotation, VAT, entmin.
}


def method_config(name):
  """The tiny digits config of METHODS entry `name`, with every piece of method state in use:
  Suave with its EMA teacher and a queue that is full from the second step on, SemPPL's queue,
  Daino's teacher and center, SimCLRv2's memory and momentum encoder. No warm-up, so that the
  first steps already move the parameters."""
  config = helpers.tiny_config(name.partition(':')[0], **_OVERRIDES.get(name, {}))
  config.optimizer.warmup_steps = 0
  return config


@dataclasses.dataclass
class Trainer:
  """One method's train step on a mesh of some devices, jitted as `train_and_evaluate` jits
  it (but without donation), and what it runs on."""

  step_fn: Callable  # (TrainState, batch) -> (TrainState, metrics)
  initial: Any  # the fresh TrainState, stored as the trainer stores it.
  abstract: Any  # its ShapeDtypeStructs with their shardings, to restore into.
  batch: Callable  # step -> the global batch of that step, split over the mesh.
  traces: list  # one entry per trace of `step_fn`.

  def run(self, state, start: int, stop: int):
    """(state after steps start..stop - 1, their metrics)."""
    metrics = []
    for step in range(start, stop):
      state, step_metrics = self.step_fn(state, self.batch(step))
      metrics.append(jax.device_get(step_metrics))
    return state, metrics


@functools.lru_cache(maxsize=None)
def trainer(name: str, num_devices: int) -> Trainer:
  """The `Trainer` of method `name` on the first `num_devices` devices (built once)."""
  config = method_config(name)
  mesh = Mesh(
    np.asarray(jax.devices()[:num_devices]).reshape(-1, 1),
    (parallel.DATA_AXIS, parallel.MODEL_AXIS),
  )
  splits = datasets.load(config)
  method = train.create_method(config, splits, mesh)
  tx, schedule = train.create_optimizer(config, config.num_steps)
  graphdef, init = train.state_initializer(method, tx, config.seed)
  sharding = train.state_sharding(method, jax.eval_shape(init))
  abstract = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), jax.eval_shape(init), sharding
  )
  augment_cfg = augment.augment_config_from(config, splits.mean, splits.std, splits.image_shape)

  traces = []

  def step(state, batch):
    traces.append(None)  # At trace time only: the compiled step does not run Python.
    return train.train_step(
      state,
      batch,
      method=method,
      graphdef=graphdef,
      tx=tx,
      augment_cfg=augment_cfg,
      schedule=schedule,
    )

  def batch(step):
    host = pipeline.host_batch(
      splits,
      step,
      seed=config.seed,
      labelled_batch_size=config.labelled_batch_size,
      batch_size=config.batch_size if method.uses_unlabelled else None,
    )
    return jax.device_put(host, parallel.batch_sharding(mesh))

  return Trainer(
    step_fn=jax.jit(step, out_shardings=(sharding, parallel.replicated(mesh))),
    initial=jax.jit(init, out_shardings=sharding)(),
    abstract=abstract,
    batch=batch,
    traces=traces,
  )


@functools.lru_cache(maxsize=None)
def two_steps(name: str, num_devices: int):
  """(state, metrics) of the method's first two steps on `num_devices` devices."""
  run = trainer(name, num_devices)
  return run.run(run.initial, 0, 2)


@pytest.fixture(scope='module', autouse=True)
def pixel_backbone():
  """Every method of this module on `PixelBackbone` (BatchNorm only in the heads), which
  compiles in a fraction of the ResNet's time; the trainers and states live as long as the
  module's tests."""
  with test_references.pixel_backbones():
    yield
  trainer.cache_clear()
  two_steps.cache_clear()


@pytest.mark.parametrize('name', METHODS)
def test_sharded_step_equals_single_device_step(name):
  state_1, metrics_1 = two_steps(name, 1)
  state_8, metrics_8 = two_steps(name, 8)
  assert len(jax.devices()) == 8
  for got, expected in zip(metrics_8, metrics_1):
    for key in ('loss', 'grad_norm'):
      np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, err_msg=key)
  state_1, state_8 = jax.device_get((state_1, state_8))
  assert int(state_8.step) == 2 and int(state_8.skipped_steps) == 0
  # Float32 sums run in another order on 8 devices. Since views of one size share a pass, the
  # momentum of the backbone biases (sums over every view) differs by up to 2.4e-4 of its scale
  # (SemPPL, whose kNN votes near a tie may flip with the last bit; 2e-5 for the others).
  # Per-device statistics (BatchNorm, kNN or Sinkhorn over one device's rows) differ by far more.
  chex.assert_trees_all_close(state_8, state_1, rtol=1e-3, atol=1e-3)
  # Not equal because nothing happened: both steps moved every part of the state.
  initial = jax.device_get(trainer(name, 1).initial)
  for part in ('params', 'opt_state', 'method_state'):
    moved = [
      not np.array_equal(a, b)
      for a, b in zip(
        jax.tree.leaves(getattr(state_1, part)), jax.tree.leaves(getattr(initial, part))
      )
    ]
    # SeLa's method state (its self-labels) moves in its dataset passes only, not in steps.
    pass_only = part == 'method_state' and name == 'sela'
    assert any(moved) or not jax.tree.leaves(getattr(initial, part)) or pass_only, part


@pytest.mark.parametrize('name', METHODS)
def test_train_state_survives_save_and_restore(name, tmp_path):
  """After two steps on 8 devices (teacher, center, queue and optimiser moved), saved and
  restored into the abstract state the trainer restores into: equal to the bit, each array
  where the trainer stores it."""
  state = two_steps(name, 8)[0]
  saver = checkpoint.Checkpointer(tmp_path, keep=2)
  saver.save(2, state, {'wall_seconds': 1.0})
  saver.close()
  restored, record = checkpoint.Checkpointer(tmp_path, keep=2).restore_latest(
    trainer(name, 8).abstract
  )
  assert record['wall_seconds'] == 1.0
  chex.assert_trees_all_equal(restored, state)
  same_place = jax.tree.map(lambda a, b: a.sharding == b.sharding, restored, state)
  assert all(jax.tree.leaves(same_place))


@pytest.mark.parametrize('name', METHODS)
def test_step_is_traced_and_compiled_once(name):
  """Two calls, with different batches and steps: one trace, one executable."""
  for num_devices in (1, 8):
    state, _ = two_steps(name, num_devices)
    run = trainer(name, num_devices)
    assert int(state.step) == 2 and len(run.traces) == 1
    assert run.step_fn._cache_size() == 1


def test_daino_resumed_equals_daino_run_straight(tmp_path):
  """Four steps straight, or two, a checkpoint, a restore and two more: the same state to the
  bit, the teacher and the center included (and the step function is not traced again for
  the restored state)."""
  run = trainer('daino', 8)
  straight = run.run(run.initial, 0, 4)[0]
  halfway = run.run(run.initial, 0, 2)[0]
  saver = checkpoint.Checkpointer(tmp_path, keep=2)
  saver.save(2, halfway, {'wall_seconds': 0.0})
  saver.close()
  restored = checkpoint.Checkpointer(tmp_path, keep=2).restore_latest(run.abstract)[0]
  resumed = run.run(restored, 2, 4)[0]
  chex.assert_trees_all_equal(resumed, straight)
  assert int(resumed.step) == 4 and len(run.traces) == 1
  teacher_moved = jax.tree.map(
    lambda a, b: not np.array_equal(a, b),
    resumed.method_state['teacher'],
    halfway.method_state['teacher'],
  )
  assert any(jax.tree.leaves(teacher_moved))
  assert not np.array_equal(resumed.method_state['center'], halfway.method_state['center'])
