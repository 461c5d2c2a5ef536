"""The trainer's pass over the whole unlabelled set (Method.dataset_pass_steps): its result
against numpy, the same on 8 devices as on 1, checkpointed and not repeated on resume; and the
unlabelled images' indices in the batch."""

import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import test_references
from helpers import saved_state, tiny_config
from semi_ssl import checkpoint, methods, train
from semi_ssl.data import augment, datasets, pipeline

PASS_STEPS = (0, 3)


class _MeanPixel(methods.REGISTRY['supervised']):
  """The supervised baseline whose state holds each unlabelled image's mean normalised pixel
  from its passes (before steps 0 and 3), how many passes it made, the step of the last, and
  the unlabelled indices of the last batch."""

  uses_unlabelled = True

  def init_state(self, params):
    return {
      'means': jnp.zeros(self.data.num_unlabelled),
      'passes': jnp.zeros((), jnp.int32),
      'last_pass': jnp.full((), -1, jnp.int32),
      'indices': jnp.zeros(self.config.batch_size, jnp.int32),
    }

  def dataset_pass_steps(self):
    return PASS_STEPS

  def dataset_pass_outputs(self, model, state, images):
    return {'means': jnp.mean(images, axis=(1, 2, 3))}

  def absorb_dataset_pass(self, model, state, outputs, step):
    del model
    return {**state, **outputs, 'passes': state['passes'] + 1, 'last_pass': step}

  def loss(self, model, state, batch, key, step):
    loss, (state, metrics) = super().loss(model, state, batch, key, step)
    return loss, ({**state, 'indices': batch['unlabelled']['indices']}, metrics)


@pytest.fixture(autouse=True)
def mean_pixel(monkeypatch):
  """The toy method registered, on `PixelBackbone` (compiles in a fraction of a ResNet's time)."""
  monkeypatch.setitem(methods.REGISTRY, 'mean_pixel', _MeanPixel)
  monkeypatch.setattr(
    train.base,
    'create_backbone',
    lambda config, data, rngs: test_references.PixelBackbone(data.image_shape[-1], rngs=rngs),
  )


def _config(**overrides):
  # Batches of 32 split over 8 devices; the last one padded.
  return tiny_config('mean_pixel', eval=dict(batch_size=32), **overrides)


def _expected_means(config):
  """Mean normalised pixel of each unlabelled image, by numpy, in index order."""
  splits = datasets.load(config)
  images = splits.unlabelled_images.astype(np.float64) / 255
  return ((images - np.asarray(splits.mean)) / np.asarray(splits.std)).mean(axis=(1, 2, 3))


def _pass_on(mesh, config):
  """The method state after one pass at step 0 of a fresh state on `mesh`."""
  splits = datasets.load(config)
  method = train.create_method(config, splits, mesh)
  tx = train.create_optimizer(config, config.num_steps)[0]
  graphdef, init = train.state_initializer(method, tx, config.seed)
  sharding = train.state_sharding(method, jax.eval_shape(init))
  run = train.make_dataset_pass(
    method,
    graphdef,
    splits.unlabelled_images,
    mesh,
    preprocess=lambda x: augment.eval_view(x, 8, splits.mean, splits.std),
    batch_size=config.eval.batch_size,
    method_state_sharding=sharding.method_state,
  )
  return jax.device_get(run(jax.jit(init, out_shardings=sharding)()).method_state)


def test_pass_equals_numpy_and_one_device():
  config = _config()
  state = _pass_on(train.parallel.create_mesh(), config)
  assert int(state['passes']) == 1 and int(state['last_pass']) == 0
  expected = _expected_means(config)
  assert len(expected) % config.eval.batch_size  # The last batch is padded.
  np.testing.assert_allclose(state['means'], expected, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(_pass_on(test_references.one_device_mesh(), config), state)


def test_pass_is_checkpointed_and_not_repeated_on_resume(tmp_path):
  """Passes before steps 0 and 3 of 4 over every unlabelled image; a run resumed from the
  checkpoint of step 2 makes only the pass of step 3 and ends in the same state. Each step's
  unlabelled indices are those of pipeline.batch_indices."""
  config = _config(eval_every=100)
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  after_first, final = saved_state(workdir, 2)['method_state'], saved_state(workdir, 4)
  np.testing.assert_allclose(after_first['means'], _expected_means(config), rtol=1e-5, atol=1e-6)
  assert (int(after_first['passes']), int(after_first['last_pass'])) == (1, 0)
  assert (int(final['method_state']['passes']), int(final['method_state']['last_pass'])) == (2, 3)
  num_unlabelled = len(after_first['means'])
  for step, state in ((1, after_first), (3, final['method_state'])):
    np.testing.assert_array_equal(
      state['indices'],
      pipeline.batch_indices(
        step,
        batch_size=config.batch_size,
        size=num_unlabelled,
        seed=config.seed,
        stream=pipeline.UNLABELLED_STREAM,
      ),
    )
  # As if killed between steps 2 and 4.
  shutil.rmtree(os.path.join(workdir, checkpoint.CHECKPOINT_DIR, '4'))
  os.remove(os.path.join(workdir, train.RESULTS_FILE))
  train.train_and_evaluate(config, workdir)
  chex.assert_trees_all_equal(saved_state(workdir, 4), final)


def test_batch_indices_name_the_unlabelled_images():
  splits = datasets.load(tiny_config())
  for step in (0, 7):
    batch = pipeline.host_batch(splits, step, seed=3, labelled_batch_size=8, batch_size=16)
    unlabelled = batch['unlabelled']
    assert unlabelled['indices'].dtype == np.int32
    np.testing.assert_array_equal(
      unlabelled['images'], splits.unlabelled_images[unlabelled['indices']]
    )
