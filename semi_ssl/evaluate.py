"""Test-set evaluation: top-1/top-5 of the method's classifier and a kNN probe on features;
the same on the validation split (keys `val_...`), on which hyperparameters are chosen.

The kNN probe (weighted vote of the k nearest labelled images by cosine similarity, weights
exp(sim / T), as in DINO) measures the backbone's features with no trained head: the
labelled subset is the memory bank, so no label outside the labelled subset is used. The
linear probe (L2-regularised logistic regression on the same frozen features of the labelled
subset, fitted full-batch in a few hundred steps) is a quick probe, not the papers' linear
evaluation (a linear layer trained on augmented views of the whole training set).

The evaluation compiles when it is made, and refuses there a batch size whose evaluation does
not fit in a device's memory, so that a run never trains only to fail at its first evaluation.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from semi_ssl import parallel
from semi_ssl.errors import UserError
from semi_ssl.ops.normalize import l2_normalize


def weighted_knn_predict(
  queries: jax.Array,
  bank: jax.Array,
  bank_labels: jax.Array,
  bank_valid: jax.Array,
  *,
  k: int,
  temperature: float,
  num_classes: int,
) -> jax.Array:
  """Class predictions int32 [N] of queries [N, D] from a bank [M, D] with labels [M].

  Entries of the bank with `bank_valid` False (padding) never vote.
  """
  sims = jnp.where(bank_valid[None, :], l2_normalize(queries) @ l2_normalize(bank).T, -jnp.inf)
  top_sims, top_idx = jax.lax.top_k(sims, k)
  weights = jnp.where(jnp.isfinite(top_sims), jnp.exp(top_sims / temperature), 0.0)
  votes = jnp.sum(jax.nn.one_hot(bank_labels[top_idx], num_classes) * weights[..., None], axis=1)
  return jnp.argmax(votes, axis=-1)


# The linear probe: L2 strengths tried, the one with the best validation top-1 reported (the
# smallest of equals); without a validation split, LINEAR_PROBE_DEFAULT_L2.
LINEAR_PROBE_L2 = (1e-5, 1e-4, 1e-3, 1e-2)
LINEAR_PROBE_DEFAULT_L2 = 1e-4
LINEAR_PROBE_STEPS = 300  # Full-batch steps.


def fit_linear_probe(
  features: jax.Array,
  labels: jax.Array,
  valid: jax.Array,
  l2: jax.Array,
  *,
  num_classes: int,
  steps: int = LINEAR_PROBE_STEPS,
) -> tuple[jax.Array, jax.Array]:
  """(weights [D, C], bias [C]) of multinomial logistic regression on features [N, D]
  (L2-normalised, as `linear_predict` reads them) with labels [N]: minimises the mean
  cross-entropy over the `valid` rows plus l2 / 2 * |weights|^2 (the bias unpenalised, as in
  scikit-learn's LogisticRegression with C = 1 / (l2 * N)) by `steps` full-batch steps of
  Nesterov's accelerated gradient from zero. With unit features and the softmax's curvature at
  most 1/2, the loss is (1 + l2)-smooth and l2-strongly convex in the weights: step 1 / (1 + l2),
  momentum (sqrt(k) - 1) / (sqrt(k) + 1), k = (1 + l2) / l2 (Nesterov 2004, eq. 2.2.22). A
  fixed number of steps without line search: it compiles and runs fast under vmap."""
  x = l2_normalize(features.astype(jnp.float32))
  count = jnp.maximum(jnp.sum(valid), 1)

  def loss(params):
    weights, bias = params
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(x @ weights + bias, labels)
    return jnp.sum(jnp.where(valid, cross_entropy, 0.0)) / count + l2 / 2 * jnp.sum(weights**2)

  smoothness = 1 + l2
  root = jnp.sqrt(smoothness / l2)
  momentum = (root - 1) / (root + 1)

  def step(_, carry):
    params, previous = carry
    ahead = jax.tree.map(lambda p, q: p + momentum * (p - q), params, previous)
    grads = jax.grad(loss)(ahead)
    return jax.tree.map(lambda a, g: a - g / smoothness, ahead, grads), params

  params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros(num_classes))
  return jax.lax.fori_loop(0, steps, step, (params, params))[0]


def chosen_probe(val_top1: np.ndarray | None) -> int:
  """Index in LINEAR_PROBE_L2 of the probe with the best validation top-1 [S] (the first of
  equals: the weakest L2); of LINEAR_PROBE_DEFAULT_L2 without a validation split (None)."""
  if val_top1 is None:
    return LINEAR_PROBE_L2.index(LINEAR_PROBE_DEFAULT_L2)
  return int(np.argmax(val_top1))


def linear_predict(features: jax.Array, weights: jax.Array, bias: jax.Array) -> jax.Array:
  """Class predictions int32 [N] of a `fit_linear_probe` probe on features [N, D]."""
  return jnp.argmax(l2_normalize(features.astype(jnp.float32)) @ weights + bias, axis=-1)


def confusion_counts(
  labels: jax.Array, predictions: jax.Array, valid: jax.Array, num_classes: int
) -> jax.Array:
  """int32 [C, C]: how many `valid` rows of true class i (row) were predicted j (column), of
  labels and predictions int [B]; a sum over the batch, so split over devices it is summed
  over them."""
  true = jax.nn.one_hot(labels, num_classes) * valid[:, None]
  return jnp.einsum('bi,bj->ij', true, jax.nn.one_hot(predictions, num_classes)).astype(jnp.int32)


def per_class_accuracy(confusion: np.ndarray) -> list[float | None]:
  """Top-1 of each class: the diagonal of a confusion matrix [C, C] (rows true classes) over
  its row sums; None for a class with no example."""
  totals = confusion.sum(axis=1)
  return [float(confusion[c, c] / n) if n else None for c, n in enumerate(totals)]


def _padded_batches(num: int, batch_size: int):
  """(indices, valid) per batch: index arrays of length batch_size covering range(num)."""
  for start in range(0, num, batch_size):
    idx = np.arange(start, start + batch_size)
    yield np.minimum(idx, num - 1), idx < num


def sharded_batches(arrays: dict, batch_size: int, mesh: Mesh):
  """Global batches of the rows of `arrays` ({name: [N, ...]}, numpy or memmaps) in order, each
  {name: [batch_size, ...], 'valid': bool [batch_size]} split over the mesh, the last padded
  with copies of row N - 1 (valid False); each process reads only its own rows."""
  num = len(next(iter(arrays.values())))
  for idx, valid in _padded_batches(num, batch_size):
    rows = parallel.process_slice(batch_size)
    local = {name: np.asarray(x[idx[rows]]) for name, x in arrays.items()}
    yield parallel.global_batch({**local, 'valid': valid[rows]}, mesh)


def device_memory(device: jax.Device) -> int:
  """Bytes one device can hold: its allocator's limit, or on CPU its share of the host's
  available memory."""
  stats = device.memory_stats()
  if stats and 'bytes_limit' in stats:
    return stats['bytes_limit']
  available = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  if os.path.exists('/proc/meminfo'):  # MemAvailable also counts the reclaimable page cache.
    with open('/proc/meminfo') as meminfo:
      available = next(
        (int(line.split()[1]) * 1024 for line in meminfo if line.startswith('MemAvailable:')),
        available,
      )
  return available // jax.local_device_count()


def _require_fits(compile_at: Callable, requested: int, batch_size: int, num_devices: int) -> None:
  """Raises UserError, naming a batch size that fits, when a compiled function needs more
  memory per device than a device has. `compile_at(b)`: the compiled functions for a batch of
  b images (b = `batch_size`, lowered from `requested`, compiles the ones the evaluation runs).

  The memory a function needs is affine in the batch (fixed: variables, kNN bank, probes and
  their copies), so two sizes give the line, and the suggested batch is checked on it compiled.
  """
  available = device_memory(jax.local_devices()[0])
  needed = _memory_needed(compile_at(batch_size))
  if needed is None or needed <= available:
    return
  smaller = max(batch_size // 2 // num_devices * num_devices, num_devices)
  per_image = (needed - _memory_needed(compile_at(smaller))) / max(batch_size - smaller, 1)
  fits = int((available - needed) / max(per_image, 1) + batch_size) // num_devices * num_devices
  fits = max(min(fits, batch_size - num_devices), num_devices)
  while fits > num_devices and _memory_needed(compile_at(fits)) > available:
    fits -= num_devices
  raise UserError(
    f'config.eval.batch_size={requested}: evaluating a batch of {batch_size} images needs '
    f'{_size(needed)} per device, and a device has {_size(available)}: set '
    f'--config.eval.batch_size={fits} or lower.'
  )


def _memory_needed(compiled_functions) -> int | None:
  """The most bytes per device any of the compiled functions needs (arguments, outputs and
  temporaries), or None where the backend does not tell."""
  needs = [
    stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
    for stats in (compiled.memory_analysis() for compiled in compiled_functions)
    if stats is not None
  ]
  return max(needs, default=None)


def _size(num_bytes: int) -> str:
  return f'{num_bytes / 2**30:.1f} GiB' if num_bytes >= 2**30 else f'{num_bytes / 2**20:.1f} MiB'


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


_ARRAYS = ('confusion_matrix', 'linear_top1')  # The counts that are arrays, not scalars.


def make_evaluator(
  apply_fn: Callable,
  splits,
  mesh: Mesh,
  *,
  preprocess: Callable,
  batch_size: int,
  knn_k: int,
  knn_temperature: float,
  variables_like: Any,
  linear_probe_steps: int = LINEAR_PROBE_STEPS,
) -> Callable[[Any], dict[str, float]]:
  """`evaluate(variables)` -> test_top1, test_top5 (when there are more than 5 classes),
  knn_top1, linear_top1 and <name>_top1 for every further prediction, in [0, 1]; and when the
  validation split has images, the same on it: val_top1, val_top5, val_knn_top1,
  val_linear_top1, val_<name>_top1. The linear probe (`fit_linear_probe` on the features of the
  labelled subset, as the kNN's bank) has the L2 strength of LINEAR_PROBE_L2 with the best
  val_linear_top1 (LINEAR_PROBE_DEFAULT_L2 without a validation split), named by linear_l2,
  fitted in `linear_probe_steps`. And
  test_confusion_matrix, int [C, C] (`confusion_counts`) of the classifier's top-1 on the test
  split (of the kNN probe's, for a method without a classifier), counted on the devices.

  `apply_fn(variables, images) -> (logits [B, C], features [B, D], {name: int32 [B]})` on
  preprocessed images, logits None for a method without a classifier (no test_top1,
  test_top5, val_top1, val_top5 then); `preprocess(uint8 images) -> float images`.
  `variables_like`: the variables as jax.ShapeDtypeStructs with their shardings, from which
  the evaluation compiles here, once. A `batch_size` beyond the largest of the evaluated sets
  (labelled, test, val), rounded up to a multiple of the devices, is lowered to it: padding is
  waste. Raises UserError when one batch does not fit in a device's memory (`device_memory`).
  """
  num_classes = splits.num_classes
  k = min(knn_k, len(splits.labelled_labels))
  largest_set = max(len(splits.labelled_labels), len(splits.test_labels), len(splits.val_labels))
  requested, batch_size = batch_size, min(batch_size, _round_up(largest_set, mesh.size))

  @jax.jit
  def embed(variables, images):
    return apply_fn(variables, preprocess(images))

  @jax.jit
  def fit_probes(bank_features, bank_labels, bank_valid):
    """Weights [S, D, C] and biases [S, C] of the linear probes of LINEAR_PROBE_L2."""
    fit = lambda l2: fit_linear_probe(
      bank_features, bank_labels, bank_valid, l2, num_classes=num_classes, steps=linear_probe_steps
    )
    return jax.vmap(fit)(jnp.asarray(LINEAR_PROBE_L2, jnp.float32))

  @jax.jit
  def counts(variables, batch, bank_features, bank_labels, bank_valid, probes):
    logits, feats, further = embed(variables, batch['images'])
    labels, valid = batch['labels'], batch['valid']
    knn = weighted_knn_predict(
      feats,
      bank_features,
      bank_labels,
      bank_valid,
      k=k,
      temperature=knn_temperature,
      num_classes=num_classes,
    )
    classifier, predictions = {}, knn
    if logits is not None:
      top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
      classifier = {
        'test_top1': jnp.sum(valid & (top5[:, 0] == labels)),
        'test_top5': jnp.sum(valid & jnp.any(top5 == labels[:, None], axis=-1)),
      }
      predictions = top5[:, 0]
    return {
      **classifier,
      'confusion_matrix': confusion_counts(labels, predictions, valid, num_classes),
      'knn_top1': jnp.sum(valid & (knn == labels)),
      'linear_top1': jnp.sum(  # [S]: each probe's.
        valid & (jax.vmap(linear_predict, (None, 0, 0))(feats, *probes) == labels), axis=-1
      ),
      **{
        f'{name}_top1': jnp.sum(valid & (predictions == labels))
        for name, predictions in further.items()
      },
    }

  sharded = parallel.batch_sharding(mesh)
  batch_like = {
    'images': jax.ShapeDtypeStruct((batch_size, *splits.image_shape), jnp.uint8, sharding=sharded),
    'labels': jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharded),
    'valid': jax.ShapeDtypeStruct((batch_size,), jnp.bool_, sharding=sharded),
  }
  features_like = jax.eval_shape(embed, variables_like, batch_like['images'])[1]
  bank_size = _round_up(len(splits.labelled_labels), mesh.size)  # Padding cut to the minimum.
  bank_like = [
    jax.ShapeDtypeStruct((bank_size, *x.shape[1:]), x.dtype, sharding=sharded)
    for x in (features_like, batch_like['labels'], batch_like['valid'])
  ]
  probes_like = jax.eval_shape(fit_probes, *bank_like)

  def compile_at(size: int) -> list:
    batch = {
      name: jax.ShapeDtypeStruct((size, *x.shape[1:]), x.dtype, sharding=x.sharding)
      for name, x in batch_like.items()
    }
    return [
      embed.lower(variables_like, batch['images']).compile(),
      counts.lower(variables_like, batch, *bank_like, probes_like).compile(),
    ]

  # Compiled once, here, at batch_size: the calls below find these executables.
  _require_fits(compile_at, requested, batch_size, mesh.size)

  def run(images, labels, fn):
    return [fn(b) for b in sharded_batches(dict(images=images, labels=labels), batch_size, mesh)]

  def evaluate(variables) -> dict[str, float]:
    bank = run(
      splits.labelled_images,
      splits.labelled_labels,
      lambda b: (embed(variables, b['images'])[1], b['labels'], b['valid']),
    )
    bank_features, bank_labels, bank_valid = (
      jax.device_put(jnp.concatenate(x)[:bank_size], sharded) for x in zip(*bank)
    )

    probes = fit_probes(bank_features, bank_labels, bank_valid)

    def rates(images, labels) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
      """Figures, confusion matrix, and the linear probes' top-1 [S]."""
      totals = run(
        images,
        labels,
        lambda b: counts(variables, b, bank_features, bank_labels, bank_valid, probes),
      )
      # Summed on the devices.
      confusion, linear = (np.asarray(sum(t.pop(key) for t in totals)) for key in _ARRAYS)
      return (
        {
          key: float(sum(int(t[key]) for t in totals)) / len(labels)
          for key in totals[0]
          if key != 'test_top5' or num_classes > 5
        },
        confusion,
        linear / len(labels),
      )

    results, confusion, linear = rates(splits.test_images, splits.test_labels)
    chosen = chosen_probe(None)
    if len(splits.val_labels):  # The same compiled functions, on the validation split.
      val, _, val_linear = rates(splits.val_images, splits.val_labels)
      chosen = chosen_probe(val_linear)
      val['linear_top1'] = float(val_linear[chosen])
      results.update({f'val_{key.removeprefix("test_")}': value for key, value in val.items()})
    results['linear_top1'] = float(linear[chosen])
    results['linear_l2'] = LINEAR_PROBE_L2[chosen]
    results['test_confusion_matrix'] = confusion
    return results

  return evaluate
