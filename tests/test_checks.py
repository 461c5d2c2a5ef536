"""Checks that stop a run before it trains: numbers in the config (`config_base.validate`) and an
evaluation batch that does not fit in a device's memory (`evaluate.make_evaluator`)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_config
from semi_ssl import checkpoint, config_base, errors, evaluate, parallel, train
from semi_ssl.data import datasets

NAN, INF = float('nan'), float('inf')


@pytest.mark.parametrize(
  'key, value, message',
  [
    (
      'optimizer.learning_rate',
      NAN,
      'must be a finite number >= 0; e.g. --config.optimizer.learning_rate=0.1.',
    ),
    (
      'optimizer.learning_rate',
      INF,
      'must be a finite number >= 0; e.g. --config.optimizer.learning_rate=0.1.',
    ),
    (
      'optimizer.learning_rate',
      -0.1,
      'must be a finite number >= 0; e.g. --config.optimizer.learning_rate=0.1.',
    ),
    (
      'optimizer.warmup_steps',
      -5,
      'must be an integer >= 0; e.g. --config.optimizer.warmup_steps=50.',
    ),
    (
      'optimizer.end_learning_rate_factor',
      -1.0,
      'must be a finite number >= 0; e.g. --config.optimizer.end_learning_rate_factor=0.0.',
    ),
    (
      'optimizer.momentum',
      1.0,
      'must be a number in [0, 1); e.g. --config.optimizer.momentum=0.9.',
    ),
    (
      'optimizer.momentum',
      -0.5,
      'must be a number in [0, 1); e.g. --config.optimizer.momentum=0.9.',
    ),
    (
      'optimizer.weight_decay',
      -5e-4,
      'must be a finite number >= 0; e.g. --config.optimizer.weight_decay=0.0005.',
    ),
    (
      'optimizer.weight_decay',
      NAN,
      'must be a finite number >= 0; e.g. --config.optimizer.weight_decay=0.0005.',
    ),
    ('optimizer.b1', 1.0, 'must be a number in [0, 1); e.g. --config.optimizer.b1=0.9.'),
    ('optimizer.b2', NAN, 'must be a number in [0, 1); e.g. --config.optimizer.b2=0.999.'),
    (
      'optimizer.trust_coefficient',
      0.0,
      'must be a finite number > 0; e.g. --config.optimizer.trust_coefficient=0.001.',
    ),
    (
      'optimizer.grad_clip_norm',
      -1.0,
      'must be a finite number >= 0; e.g. --config.optimizer.grad_clip_norm=0.0.',
    ),
    (
      'eval.knn_temperature',
      0.0,
      'must be a finite number > 0; e.g. --config.eval.knn_temperature=0.07.',
    ),
    (
      'eval.knn_temperature',
      INF,
      'must be a finite number > 0; e.g. --config.eval.knn_temperature=0.07.',
    ),
    ('seed', -1, 'must be an integer >= 0; e.g. --config.seed=0.'),
  ],
)
def test_a_bad_number_is_one_line_naming_the_key_and_a_value_that_runs(key, value, message):
  config = tiny_config()
  config.update_from_flattened_dict({key: value})
  with pytest.raises(ValueError) as error:
    config_base.validate(config, num_devices=8, workdir=None)
  assert str(error.value) == f'config.{key}={value!r} {message}'


def test_the_smallest_numbers_that_run_are_accepted():
  config = tiny_config()
  config.update_from_flattened_dict(
    {
      'seed': 0,
      'optimizer.learning_rate': 0.0,
      'optimizer.warmup_steps': 0,
      'optimizer.end_learning_rate_factor': 0.0,
      'optimizer.momentum': 0.0,
      'optimizer.weight_decay': 0.0,
      'optimizer.b1': 0.0,
      'optimizer.b2': 0.0,
      'optimizer.trust_coefficient': 1e-9,
      'optimizer.grad_clip_norm': 0.0,
      'eval.knn_temperature': 1e-9,
    }
  )
  config_base.validate(config, num_devices=8, workdir=None)


def _random_features(weights, images):
  """A fixed random projection of the pixels: logits [B, 10], features [B, 8192]."""
  features = images.reshape(images.shape[0], -1) @ weights
  return features[:, :10], jnp.tile(features, (1, 128)), {}


def _evaluate_digits(batch_size: int) -> dict:
  """Digits' test metrics of `_random_features`, evaluated `batch_size` images at a time."""
  splits = datasets.load(tiny_config())
  mesh = parallel.create_mesh(1)
  weights = jax.device_put(
    jax.random.normal(jax.random.PRNGKey(0), (64, 64)), parallel.replicated(mesh)
  )
  evaluator = evaluate.make_evaluator(
    _random_features,
    splits,
    mesh,
    preprocess=lambda x: x.astype(jnp.float32) / 255,
    batch_size=batch_size,
    knn_k=20,
    knn_temperature=0.07,
    variables_like=jax.ShapeDtypeStruct(weights.shape, weights.dtype, sharding=weights.sharding),
    linear_probe_steps=5,  # Its 8192 features on 8 CPU devices: 12 s in 300 steps.
  )
  results = evaluator(weights)
  return {**results, 'test_confusion_matrix': results['test_confusion_matrix'].tolist()}


def test_the_confusion_matrix_counts_the_classifiers_test_predictions():
  """Summed over the batches of the test split (the last padded) on the devices."""
  results = _evaluate_digits(40)
  splits = datasets.load(tiny_config())
  weights = jax.random.normal(jax.random.PRNGKey(0), (64, 64))
  logits = _random_features(weights, jnp.asarray(splits.test_images, jnp.float32) / 255)[0]
  want = np.zeros((10, 10), np.int64)
  np.add.at(want, (splits.test_labels, np.argmax(logits, axis=-1)), 1)
  assert results['test_confusion_matrix'] == want.tolist()
  assert np.sum(want) == len(splits.test_labels) == 360
  assert results['test_top1'] == np.trace(want) / 360


def test_an_eval_batch_beyond_the_data_is_lowered_to_it_with_the_same_results():
  """10**6 images a batch pads digits' 360 test images to a 10**6 x 10**6 kNN: terabytes."""
  assert _evaluate_digits(10**6) == _evaluate_digits(512) == _evaluate_digits(40)


def test_an_eval_batch_that_does_not_fit_is_refused_naming_one_that_does(monkeypatch):
  monkeypatch.setattr(evaluate, 'device_memory', lambda device: 0)
  with pytest.raises(
    errors.UserError,
    match=(
      r'^config\.eval\.batch_size=512: evaluating a batch of 360 images needs [\d.]+ MiB per '
      r'device, and a device has 0\.0 MiB: set --config\.eval\.batch_size=8 or lower\.$'
    ),
  ) as error:
    _evaluate_digits(512)
  needed = float(re.search(r'needs ([\d.]+) MiB', str(error.value)).group(1)) * 2**20
  limit = int(0.6 * needed)
  monkeypatch.setattr(evaluate, 'device_memory', lambda device: limit)
  with pytest.raises(errors.UserError) as error:
    _evaluate_digits(512)
  fits = int(re.search(r'--config\.eval\.batch_size=(\d+) or lower', str(error.value)).group(1))
  assert 8 < fits < 360 and fits % 8 == 0
  _evaluate_digits(fits)  # Fits in `limit`.


def test_an_eval_batch_that_does_not_fit_stops_the_run_before_it_trains(tmp_path, monkeypatch):
  monkeypatch.setattr(evaluate, 'device_memory', lambda device: 0)
  monkeypatch.setattr(train, 'train_step', lambda *args, **kwargs: pytest.fail('trained'))
  workdir = str(tmp_path / 'run')
  with pytest.raises(
    errors.UserError,
    match=r'^config\.eval\.batch_size=512: evaluating a batch '
    r'of 360 images needs .* set --config\.eval\.batch_size=8 or lower\.$',
  ):
    train.train_and_evaluate(tiny_config(), workdir)
  assert not checkpoint.has_checkpoint(workdir)
