"""Speed features: no host transfer inside the train step, batches prefetched to the devices,
rematerialisation, bfloat16 compute with float32 state, profiling on request."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from helpers import tiny_config
from semi_ssl import parallel, train
from semi_ssl.data import augment, datasets, pipeline


def jitted_step(config, devices=None):
  """(step, state, batches): the trainer's jitted step of `config`, its fresh state and an
  iterator over its global batches, on `devices` (all by default)."""
  mesh = Mesh(
    np.asarray(devices or jax.devices()).reshape(-1, 1), (parallel.DATA_AXIS, parallel.MODEL_AXIS)
  )
  splits = datasets.load(config)
  method = train.create_method(config, splits, mesh)
  tx, schedule = train.create_optimizer(config, config.num_steps)
  graphdef, state = train.init_state(method, tx, config.seed, parallel.replicated(mesh))
  aug = augment.augment_config_from(config, splits.mean, splits.std, splits.image_shape)
  step = jax.jit(
    functools.partial(
      train.train_step, method=method, graphdef=graphdef, tx=tx, augment_cfg=aug, schedule=schedule
    ),
    donate_argnums=0,
  )
  batches = pipeline.iterate(
    splits,
    mesh,
    start_step=0,
    num_steps=config.num_steps,
    seed=config.seed,
    labelled_batch_size=config.labelled_batch_size,
    batch_size=config.batch_size if method.uses_unlabelled else None,
  )
  return step, state, batches


@pytest.mark.parametrize('method', ['supervised', 'semppl'])
def test_train_steps_make_no_host_transfer(method):
  """Once the state and batches are on the devices, steps (SemPPL: its queue and EMA teacher)
  neither read nor send anything from the host."""
  step, state, batches = jitted_step(tiny_config(method, num_steps=3), jax.devices()[:2])
  batches = list(batches)
  step(jax.tree.map(lambda x: x.copy(), state), batches[0])  # Compiles outside the guard.
  with jax.transfer_guard('disallow'):
    for batch in batches:
      state, metrics = step(state, batch)
  assert int(state.step) == 3 and np.isfinite(float(metrics['loss']))
