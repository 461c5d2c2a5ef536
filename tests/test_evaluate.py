"""The evaluation's figures beyond top-1: the confusion matrix counted on the devices, the
per-class accuracy read from it, and the linear probe."""

import functools

import jax
import numpy as np
from sklearn.linear_model import LogisticRegression

from semi_ssl import evaluate, parallel


def test_confusion_counts_split_over_devices_equal_numpys_and_give_per_class_accuracy():
  rng = np.random.default_rng(0)
  labels, predictions = rng.integers(0, 5, (2, 64))
  valid = np.arange(64) < 60  # The last 4 rows are padding.
  mesh = parallel.create_mesh(1)
  sharded = jax.device_put((labels, predictions, valid), parallel.batch_sharding(mesh))
  counts = jax.jit(evaluate.confusion_counts, static_argnums=3)(*sharded, 5)
  want = np.zeros((5, 5), np.int64)
  np.add.at(want, (labels[:60], predictions[:60]), 1)
  np.testing.assert_array_equal(counts, want)
  assert counts.sum() == 60
  per_class = evaluate.per_class_accuracy(np.asarray(counts))
  np.testing.assert_allclose(per_class, np.diag(want) / want.sum(axis=1))
  assert evaluate.per_class_accuracy(np.array([[2, 0], [0, 0]])) == [1.0, None]


def test_linear_probe_equals_scikit_learns_logistic_regression():
  """Same predictions and weights (scikit-learn's sum to zero over the classes) on overlapping
  Gaussian blobs, the padding rows ignored."""
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 30)
  features = rng.normal(size=(3, 5))[labels] * 3 + rng.normal(size=(90, 5))
  padded = np.concatenate([features, rng.normal(size=(6, 5)) * 100])
  valid = np.arange(96) < 90
  l2 = 1e-2
  fit = jax.jit(functools.partial(evaluate.fit_linear_probe, num_classes=3))
  weights, bias = fit(padded, np.concatenate([labels, np.zeros(6, int)]), valid, l2)
  normalized = features / np.linalg.norm(features, axis=1, keepdims=True)
  reference = LogisticRegression(C=1 / (l2 * 90), tol=1e-10, max_iter=10_000)
  reference.fit(normalized, labels)
  predictions = np.asarray(evaluate.linear_predict(features, weights, bias))
  np.testing.assert_array_equal(predictions, reference.predict(normalized))
  assert np.mean(predictions == labels) == reference.score(normalized, labels) < 1
  np.testing.assert_allclose(weights - weights.mean(1, keepdims=True), reference.coef_.T, atol=1e-3)


def test_the_probe_is_chosen_on_the_validation_split_else_the_default():
  assert evaluate.chosen_probe(np.array([0.5, 0.75, 0.75, 0.25])) == 1
  assert evaluate.LINEAR_PROBE_L2[evaluate.chosen_probe(None)] == evaluate.LINEAR_PROBE_DEFAULT_L2
