"""Gradient accumulation (`config.accumulate_steps`): one optimiser step over micro-batches
scanned inside the jitted step equals the full-batch step for a model without BatchNorm, on 8
devices as on 1, without gathering the batch; the step counter and schedule advance once per
step; every method's step traces with it; a bad value is a config error naming the fix."""

import collections
import functools
import re

import chex
import jax
import jax.extend.core
import numpy as np
import pytest

import helpers
import test_method_contracts
import test_references
from semi_ssl import config_base, parallel, train
from semi_ssl.data import augment, datasets, pipeline

LABELLED = 32  # 4 images per device on 8 devices: 4 micro-batches of one image each.
NUM_STEPS = 2


@pytest.fixture(scope='module', autouse=True)
def pixel_backbone():
  """Every method of this module on `PixelBackbone`: no BatchNorm (the supervised head is
  linear), so micro-batches change nothing but the order of float sums."""
  with test_references.pixel_backbones():
    yield
  jitted.cache_clear()
  trained.cache_clear()


def accumulating_config(accumulate_steps: int):
  """The tiny supervised config at a labelled batch of LABELLED, with a warm-up shorter than
  the run, so that each step has its own learning rate."""
  return helpers.tiny_config(
    labelled_batch_size=LABELLED,
    accumulate_steps=accumulate_steps,
    num_steps=NUM_STEPS,
    optimizer=dict(warmup_steps=1),
  )


@functools.lru_cache(maxsize=None)
def jitted(accumulate_steps: int, num_devices: int):
  """(jitted step, fresh state, batch of a step, schedule) of `accumulating_config` on the
  first `num_devices` devices, built by `train.step_builders` as the trainer builds it."""
  config = accumulating_config(accumulate_steps)
  mesh = jax.sharding.Mesh(
    np.asarray(jax.devices()[:num_devices]).reshape(-1, 1),
    (parallel.DATA_AXIS, parallel.MODEL_AXIS),
  )
  splits = datasets.load(config)
  method = train.create_method(config, splits, mesh)
  aug = augment.augment_config_from(config, splits.mean, splits.std, splits.image_shape)
  _, init, step = train.step_builders(config, method, aug)
  state = jax.jit(init, out_shardings=parallel.replicated(mesh))()

  def batch(s):
    host = pipeline.host_batch(
      splits, s, seed=config.seed, labelled_batch_size=LABELLED, batch_size=None
    )
    return jax.device_put(host, parallel.batch_sharding(mesh))

  schedule = train.create_optimizer(config, config.num_steps)[1]
  return jax.jit(step, out_shardings=(None, parallel.replicated(mesh))), state, batch, schedule


@functools.lru_cache(maxsize=None)
def trained(accumulate_steps: int, num_devices: int):
  """(final state, per-step metrics) of NUM_STEPS steps."""
  step, state, batch, _ = jitted(accumulate_steps, num_devices)
  metrics = []
  for s in range(NUM_STEPS):
    state, step_metrics = step(state, batch(s))
    metrics.append(jax.device_get(step_metrics))
  return jax.device_get(state), metrics


def assert_same_steps(got, expected):
  (state, metrics), (expected_state, expected_metrics) = got, expected
  for m, e in zip(metrics, expected_metrics):
    for key in ('loss', 'grad_norm', 'train_top1', 'learning_rate'):
      np.testing.assert_allclose(m[key], e[key], rtol=1e-5, err_msg=key)
  chex.assert_trees_all_close(
    (state.params, state.opt_state),
    (expected_state.params, expected_state.opt_state),
    rtol=1e-5,
    atol=1e-8,
  )


def test_accumulated_step_equals_the_full_batch_step():
  full, accumulated = trained(1, 8), trained(4, 8)
  assert_same_steps(accumulated, full)
  initial = jax.device_get(jitted(1, 8)[1].params)
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), full[0].params, initial)
  assert all(jax.tree.leaves(moved))


def test_accumulated_step_on_8_devices_equals_1_device():
  assert_same_steps(trained(4, 8), trained(4, 1))


def test_step_counter_and_schedule_advance_once_per_accumulated_step():
  state, metrics = trained(4, 8)
  schedule = jitted(4, 8)[3]
  assert int(state.step) == NUM_STEPS and int(state.skipped_steps) == 0
  # The warm-up: 0 at the first step, the peak at the second (not the 4th or 8th micro-batch).
  rates = [float(m['learning_rate']) for m in metrics]
  np.testing.assert_allclose(rates, [float(schedule(s)) for s in range(NUM_STEPS)])
  assert rates[0] == 0 and rates[1] > 0


def collectives(accumulate_steps: int) -> collections.Counter:
  """How many of each collective that moves rows between devices (all-gather, all-to-all,
  collective-permute) the compiled step on 8 devices holds."""
  step, state, batch, _ = jitted(accumulate_steps, 8)
  text = step.lower(state, batch(0)).compile().as_text()
  return collections.Counter(
    re.findall(r'\b(all-gather|all-to-all|collective-permute)(?:-start)?\(', text)
  )


def test_micro_batches_keep_each_devices_rows():
  """Splitting the batch into micro-batches moves no image between devices: the accumulated
  step has no collective that the full-batch step has not (contiguous micro-batches, a
  reshape to [4, B / 4] split along its second axis, add 3 all-to-alls and 3 permutes)."""
  full, accumulated = collectives(1), collectives(4)
  assert full['all-to-all'] > 0  # The count sees the full-batch step's own.
  assert accumulated == full


def _float_images(jaxpr, in_scan: bool = False) -> set[tuple[tuple[int, ...], bool]]:
  """{(shape, whether made inside a scan)} of the float32 [B, H, W, C] arrays that the
  equations of `jaxpr` and of its sub-jaxprs make."""
  made = set()
  for eqn in jaxpr.eqns:
    made |= {
      (v.aval.shape, in_scan)
      for v in eqn.outvars
      if getattr(v.aval, 'dtype', None) == np.float32 and len(v.aval.shape) == 4
    }
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      made |= _float_images(sub, in_scan or eqn.primitive.name == 'scan')
  return made


def test_micro_batches_build_their_own_views():
  """With 4 micro-batches, the views (float32 [B, 8, 8, 1]) exist at a quarter of the batch,
  inside the scan, never at the whole batch: accumulation shrinks them with the activations."""
  step, state, batch, _ = jitted(4, 8)
  made = _float_images(jax.make_jaxpr(step)(state, batch(0)).jaxpr)
  assert ((LABELLED // 4, 8, 8, 1), True) in made
  assert not any(shape[0] == LABELLED for shape, _ in made), made


@pytest.mark.parametrize('name', test_method_contracts.METHODS)
def test_every_methods_step_traces_with_accumulation(name):
  """The method state (queues, teachers, centers) and the model state (BatchNorm statistics)
  go through the scan over micro-batches with their structure and dtypes: traced abstractly."""
  config = test_method_contracts.method_config(name)
  config.accumulate_steps = 2
  mesh = parallel.create_mesh()
  splits = datasets.load(config)
  method = train.create_method(config, splits, mesh)
  aug = augment.augment_config_from(config, splits.mean, splits.std, splits.image_shape)
  _, init, step = train.step_builders(config, method, aug)
  host = pipeline.host_batch(
    splits,
    0,
    seed=config.seed,
    labelled_batch_size=config.labelled_batch_size,
    batch_size=config.batch_size if method.uses_unlabelled else None,
  )
  batch = jax.device_put(host, parallel.batch_sharding(mesh))
  state, metrics = jax.eval_shape(step, jax.eval_shape(init), batch)
  assert state.step.shape == () and metrics['loss'].shape == ()


@pytest.mark.parametrize(
  'overrides, message',
  [
    (dict(accumulate_steps=0), 'must be a positive integer'),
    (dict(accumulate_steps=-2), 'must be a positive integer'),
    # 2 labelled images per device.
    (dict(accumulate_steps=4), r'images per device of config.labelled_batch_size=16 .* \[1, 2\]'),
    (
      dict(method='suave', accumulate_steps=3, labelled_batch_size=48, batch_size=64),
      'config.batch_size=64',
    ),
  ],
)
def test_bad_accumulate_steps_is_a_config_error(overrides, message):
  config = helpers.tiny_config(**overrides)
  with pytest.raises(ValueError, match=message):
    config_base.validate(config, num_devices=8, workdir=None)


def test_dividing_accumulate_steps_is_valid():
  config = helpers.tiny_config(accumulate_steps=2, labelled_batch_size=32, batch_size=48)
  config_base.validate(config, num_devices=8, workdir=None)


def test_an_unread_unlabelled_batch_size_is_not_checked():
  """The supervised baseline reads no unlabelled batch: its batch_size may split unevenly."""
  config = helpers.tiny_config(accumulate_steps=2, labelled_batch_size=32, batch_size=12)
  config_base.validate(config, num_devices=8, workdir=None)
  with pytest.raises(ValueError, match='config.batch_size=12 is not divisible by the 8'):
    config_base.validate(helpers.tiny_config('suave', batch_size=12), num_devices=8, workdir=None)
