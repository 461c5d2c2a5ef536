"""The evaluation's figures beyond top-1: the confusion matrix counted on the devices and the
per-class accuracy read from it."""

import jax
import numpy as np

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
