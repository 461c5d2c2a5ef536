"""Test-set evaluation: top-1/top-5 of the method's classifier and a kNN probe on features.

The kNN probe (weighted vote of the k nearest labelled images by cosine similarity, weights
exp(sim / T), as in DINO) measures the backbone's features with no trained head: the
labelled subset is the memory bank, so no label outside the labelled subset is used.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from semi_ssl import parallel
from semi_ssl.ops.normalize import l2_normalize


def weighted_knn_predict(queries: jax.Array, bank: jax.Array, bank_labels: jax.Array,
                         bank_valid: jax.Array, *, k: int, temperature: float,
                         num_classes: int) -> jax.Array:
  """Class predictions int32 [N] of queries [N, D] from a bank [M, D] with labels [M].

  Entries of the bank with `bank_valid` False (padding) never vote.
  """
  sims = jnp.where(bank_valid[None, :], l2_normalize(queries) @ l2_normalize(bank).T, -jnp.inf)
  top_sims, top_idx = jax.lax.top_k(sims, k)
  weights = jnp.where(jnp.isfinite(top_sims), jnp.exp(top_sims / temperature), 0.0)
  votes = jnp.sum(jax.nn.one_hot(bank_labels[top_idx], num_classes) * weights[..., None], axis=1)
  return jnp.argmax(votes, axis=-1)


def _padded_batches(num: int, batch_size: int):
  """(indices, valid) per batch: index arrays of length batch_size covering range(num)."""
  for start in range(0, num, batch_size):
    idx = np.arange(start, start + batch_size)
    yield np.minimum(idx, num - 1), idx < num


def make_evaluator(apply_fn: Callable, splits, mesh: Mesh, *, preprocess: Callable,
                   batch_size: int, knn_k: int,
                   knn_temperature: float) -> Callable[[Any], dict[str, float]]:
  """`evaluate(variables)` -> test_top1, test_top5 (when there are more than 5 classes),
  knn_top1 and <name>_top1 for every further prediction, in [0, 1]; it compiles once.

  `apply_fn(variables, images) -> (logits [B, C], features [B, D], {name: int32 [B]})` on
  preprocessed images; `preprocess(uint8 images) -> float images`.
  """
  num_classes = splits.num_classes
  k = min(knn_k, len(splits.labelled_labels))

  @jax.jit
  def embed(variables, images):
    return apply_fn(variables, preprocess(images))

  @jax.jit
  def counts(variables, batch, bank_features, bank_labels, bank_valid):
    logits, feats, further = embed(variables, batch['images'])
    labels, valid = batch['labels'], batch['valid']
    top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
    knn = weighted_knn_predict(feats, bank_features, bank_labels, bank_valid, k=k,
                               temperature=knn_temperature, num_classes=num_classes)
    return {'test_top1': jnp.sum(valid & (top5[:, 0] == labels)),
            'test_top5': jnp.sum(valid & jnp.any(top5 == labels[:, None], axis=-1)),
            'knn_top1': jnp.sum(valid & (knn == labels)),
            **{f'{name}_top1': jnp.sum(valid & (predictions == labels))
               for name, predictions in further.items()}}

  def run(images, labels, fn):
    outputs = []
    for idx, valid in _padded_batches(len(labels), batch_size):
      rows = parallel.process_slice(batch_size)
      local = {'images': np.asarray(images[idx[rows]]), 'labels': labels[idx[rows]],
               'valid': valid[rows]}
      outputs.append(fn(parallel.global_batch(local, mesh)))
    return outputs

  def evaluate(variables) -> dict[str, float]:
    bank = run(splits.labelled_images, splits.labelled_labels,
               lambda b: (embed(variables, b['images'])[1], b['labels'], b['valid']))
    bank_features, bank_labels, bank_valid = (jnp.concatenate(x) for x in zip(*bank))
    totals = run(splits.test_images, splits.test_labels,
                 lambda b: counts(variables, b, bank_features, bank_labels, bank_valid))
    results = {key: float(sum(int(t[key]) for t in totals)) / len(splits.test_labels)
               for key in totals[0]}
    if num_classes <= 5:
      del results['test_top5']
    return results

  return evaluate
