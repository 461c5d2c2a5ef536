"""Whole losses against numpy written from the papers and the official code, not from this
code's helpers: Suave (with and without the queue and the EMA teacher), SemPPL (with a draw of
semantic positives that the queue fixes), and the weighted kNN probe behind `knn_top1`.

The models run on `PixelBackbone`, a backbone without BatchNorm whose numpy twin is one line,
and heads of one linear layer (no BatchNorm either), so that every number of the forward pass
can be recomputed in numpy from the extracted parameters.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

import helpers
import test_semppl
from semi_ssl import config_base, evaluate, parallel
from semi_ssl.methods import base, semppl, suave
from semi_ssl.ops import knn

DIGITS = base.DataInfo(num_classes=10, image_shape=(8, 8, 1))
NUM_GLOBAL, NUM_LOCAL = 2, 2
FEATURES = 12


class PixelBackbone(nnx.Module):
  """[B, H, W, C] -> features [B, F]: the mean over pixels of tanh(pixel @ kernel + bias), for
  views of any size."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(channels, FEATURES, rngs=rngs)
    self.feature_dim = FEATURES

  def __call__(self, x, *, train):
    del train
    return jnp.mean(jnp.tanh(self.linear(x)), axis=(1, 2))


@contextlib.contextmanager
def pixel_backbones():
  """Every method built inside gets a `PixelBackbone`."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(
      base,
      'create_backbone',
      lambda config, data, rngs: PixelBackbone(data.image_shape[-1], rngs=rngs),
    )
    yield


@pytest.fixture
def pixel_backbone():
  """Every method built in the test gets a `PixelBackbone`."""
  with pixel_backbones():
    yield


def one_device_mesh():
  return Mesh(
    np.asarray(jax.devices()[:1]).reshape(1, 1), (parallel.DATA_AXIS, parallel.MODEL_AXIS)
  )


def random_params(method, seed):
  """(graphdef, rest, params) of the method's model with every parameter (biases too) drawn
  at random, so that none is zero by its initialiser."""
  graphdef, params, rest = nnx.split(method.create_model(nnx.Rngs(seed)), nnx.Param, ...)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  leaves = [0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  return graphdef, rest, jax.tree.unflatten(tree, leaves)


def as_numpy(params):
  """nnx.State -> nested dict of float64 numpy arrays."""
  return jax.tree.map(lambda x: np.asarray(x, np.float64), nnx.to_pure_dict(params))


def random_views(rng, n):
  """NUM_GLOBAL views [n, 8, 8, 1] then NUM_LOCAL [n, 6, 6, 1] of random normalised images."""
  return [
    rng.normal(size=(n, s, s, 1)).astype(np.float32) for s in [8] * NUM_GLOBAL + [6] * NUM_LOCAL
  ]


def to_jax(batch):
  return jax.tree.map(jnp.asarray, batch)


# ---------------------------------------------------------------------------------------------
# numpy: the forward pass and the math of the papers.


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def linear(p, x):
  return x @ p['kernel'] + p['bias']


def np_features(p, x):
  """PixelBackbone: [B, H, W, C] -> [B, F]."""
  return np.tanh(linear(p['backbone']['linear'], x)).mean(axis=(1, 2))


def log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def cross_entropy(targets, logits):
  """Per-row H(targets, softmax(logits)) [N]."""
  return -(targets * log_softmax(logits)).sum(axis=-1)


def swav_sinkhorn(out, epsilon, iterations):
  """SwAV's / Suave's `distributed_sinkhorn` on one device: scores [B, K] -> assignments."""
  q = np.exp(out / epsilon).T  # K x B
  num_prototypes, num_samples = q.shape
  q /= q.sum()
  for _ in range(iterations):
    q /= q.sum(axis=1, keepdims=True)  # Each prototype's total weight 1 / K.
    q /= num_prototypes
    q /= q.sum(axis=0, keepdims=True)  # Each sample's total weight 1 / B.
    q /= num_samples
  return (q * num_samples).T


def suave_embed(p, x):
  """backbone -> projector (one linear layer) -> L2-normalised embedding [B, D]."""
  return unit(linear(p['projector']['out']['linear'], np_features(p, x)))


def suave_scores(p, z):
  """Cosine scores [B, K] of embeddings against the L2-normalised prototypes."""
  return z @ unit(p['prototypes']['kernel']).T


def suave_reference(student, teacher, queue, batch, hp, num_classes):
  """Suave's loss (Fini et al., CVPR 2023, Sec. 3; suave/main_suave.py `train`) and the new
  queue [G, Q, D] (None without one).

  Labelled views: cross-entropy of scores / T against the smoothed one-hot label (torch's
  `label_smoothing`). Unlabelled: for each global crop i, the Sinkhorn assignment q_i of its
  scores (the EMA teacher's pass and prototypes when there is one, else the student's, without
  gradient), preceded by queue i scored by the same prototypes once that queue is full (its
  last row written), is predicted by every other view; the mean over those V - 1 views and
  over the G crops. Queue i then takes crop i's embeddings in front. The two terms are weighted
  by their share of the crops in the batch (`lab_weight`, `unlab_weight`).
  """
  labelled, unlabelled = batch['labelled']['views'], batch['unlabelled']['views']
  labels = batch['labelled']['labels']
  num_labelled, num_unlabelled, num_views = len(labels), len(unlabelled[0]), len(unlabelled)
  smoothing, temperature = hp.label_smoothing, hp.temperature
  targets = (1 - smoothing) * np.eye(num_classes)[labels] + smoothing / num_classes
  lab_loss = np.mean(
    [
      cross_entropy(targets, suave_scores(student, suave_embed(student, v)) / temperature)
      for v in labelled
    ]
  )
  student_scores = [suave_scores(student, suave_embed(student, v)) for v in unlabelled]
  source = teacher if teacher is not None else student
  embeds = [suave_embed(source, v) for v in unlabelled[:NUM_GLOBAL]]
  unlab_loss, new_queue = 0.0, []
  for i in range(NUM_GLOBAL):
    out = suave_scores(source, embeds[i])
    if queue is not None:
      if np.any(queue[i, -1] != 0):
        out = np.concatenate([suave_scores(source, queue[i]), out])
      new_queue.append(np.concatenate([embeds[i], queue[i]])[: len(queue[i])])
    q = swav_sinkhorn(out, hp.sinkhorn_epsilon, hp.sinkhorn_iters)[-num_unlabelled:]
    unlab_loss += np.sum(
      [
        np.mean(cross_entropy(q, student_scores[v] / temperature))
        for v in range(num_views)
        if v != i
      ]
    ) / (num_views - 1)
  unlab_loss /= NUM_GLOBAL
  lab_crops, unlab_crops = num_labelled * len(labelled), num_unlabelled * num_views
  loss = (lab_crops * lab_loss + unlab_crops * unlab_loss) / (lab_crops + unlab_crops)
  return loss, (np.stack(new_queue) if queue is not None else None)


# ---------------------------------------------------------------------------------------------
# Suave.


def suave_config(queue_size, ema_momentum):
  """The digits config's Suave section (every option at its default), narrowed, with no mixup
  and label smoothing 0.1."""
  c = config_base.get_base_config()
  c.method = 'suave'
  c.augment.num_global_crops, c.augment.num_local_crops = NUM_GLOBAL, NUM_LOCAL
  c.suave = helpers.tiny_config('suave').suave
  c.suave.update(
    projector_hidden_dim=16,
    embed_dim=8,
    projector_layers=1,
    label_smoothing=0.1,
    queue_size=queue_size,
    ema_momentum=ema_momentum,
    mixup_alpha=0.0,
  )
  return c


@pytest.mark.parametrize('queue_filled', [None, 0, 7, 12], ids=lambda n: f'queue{n}')
@pytest.mark.parametrize('with_teacher', [False, True], ids=['student', 'teacher'])
def test_suave_loss_matches_numpy(pixel_backbone, queue_filled, with_teacher):
  """queue_filled: None no queue; else the number of the queue's 12 entries written before
  this step (only a full queue joins the Sinkhorn problem)."""
  queue_size = 0 if queue_filled is None else 12
  config = suave_config(queue_size, ema_momentum=0.9 if with_teacher else 0.0)
  method = suave.Suave(config, DIGITS, one_device_mesh())
  graphdef, rest, params = random_params(method, seed=0)
  rng = np.random.default_rng(1)
  batch = {
    'labelled': {'views': random_views(rng, 4), 'labels': np.array([3, 0, 3, 9])},
    'unlabelled': {'views': random_views(rng, 6)},
  }
  state = method.init_state(params)
  teacher = None
  if with_teacher:
    state['teacher'] = teacher = random_params(method, seed=2)[2]
  queue = None
  if queue_filled is not None:
    queue = np.zeros((NUM_GLOBAL, 12, 8), np.float32)
    queue[:, :queue_filled] = unit(rng.normal(size=(NUM_GLOBAL, queue_filled, 8)))
    state['queue'], state['queue_count'] = jnp.asarray(queue), jnp.int32(queue_filled)

  @jax.jit
  def loss(params, state, batch):
    model = nnx.merge(graphdef, params, rest, copy=True)
    return method.loss(model, state, batch, jax.random.PRNGKey(0), jnp.int32(0))

  got, (new_state, _) = loss(params, state, to_jax(batch))
  expected, expected_queue = suave_reference(
    as_numpy(params), teacher and as_numpy(teacher), queue, batch, config.suave, 10
  )
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  if queue is not None:
    np.testing.assert_allclose(new_state['queue'], expected_queue, rtol=1e-5, atol=1e-6)
    assert int(new_state['queue_count']) == min(queue_filled + 6, 12)


def test_suave_reference_sees_the_queue_and_the_teacher(pixel_backbone):
  """The cases above differ: the full queue and the teacher change the numpy loss."""
  config = suave_config(12, 0.0)
  method = suave.Suave(config, DIGITS, one_device_mesh())
  student, teacher = (as_numpy(random_params(method, seed)[2]) for seed in (0, 2))
  rng = np.random.default_rng(1)
  batch = {
    'labelled': {'views': random_views(rng, 4), 'labels': np.array([3, 0, 3, 9])},
    'unlabelled': {'views': random_views(rng, 6)},
  }
  queue = unit(rng.normal(size=(NUM_GLOBAL, 12, 8)))
  plain = suave_reference(student, None, None, batch, config.suave, 10)[0]
  assert abs(suave_reference(student, None, queue, batch, config.suave, 10)[0] - plain) > 1e-3
  assert abs(suave_reference(student, teacher, None, batch, config.suave, 10)[0] - plain) > 1e-3


# ---------------------------------------------------------------------------------------------
# SemPPL.


def semppl_reference(online, target, queue, batch, hp, step, num_classes):
  """SemPPL's loss (Bošnjak et al., ICLR 2023, as semppl.py's docstring states it: every other
  image of the batch a negative), its terms and the new queue.

  h: unit-norm online predictions (backbone -> projector -> predictor) of every view; t:
  unit-norm target projections of the global views. An unlabelled image's pseudo-label is the
  majority vote of the k queue entries nearest to its summed global h (ties: the larger summed
  similarity, then the smaller class). Its semantic positives are the entries of its
  (pseudo-)label: the test's queue holds at most S of each, so the uniform draw of S (or all
  there are), fresh or not, is fixed. Only then are the labelled images' t of every global
  view, with their labels, written over the oldest queue entries (ring buffer). For every view
  v and other global view g: -log(e^(h_i t_i / T) / (e^(h_i t_i / T) + sum_{j != i}
  e^(h_i t_j / T))), and the same with each semantic positive in place of t_i (mean over them,
  0 without any). ReLICv2's invariance penalty, weighted by `invariance_weight`: for the
  ordered pairs of global views (v, g), KL(p || q) of p_i(j) ~ e^(h_i^v t_j^g / T) and
  q_i(j) ~ e^(h_i^g t_j^v / T) over all j. Plus the cross-entropy of the linear classifier on
  the labelled global views' features.
  """
  labelled, unlabelled = batch['labelled']['views'], batch['unlabelled']['views']
  labels = batch['labelled']['labels']
  num_labelled, temperature = len(labels), hp.temperature
  views = [np.concatenate([l, u]) for l, u in zip(labelled, unlabelled)]
  features = [np_features(online, v) for v in views]
  predictions = [
    unit(
      linear(online['predictor']['out']['linear'], linear(online['projector']['out']['linear'], f))
    )
    for f in features
  ]
  targets = [
    unit(linear(target['projector']['out']['linear'], np_features(target, v)))
    for v in views[:NUM_GLOBAL]
  ]

  assert hp.num_negatives in (0, len(labels) + len(batch['unlabelled']['views'][0]) - 1)
  embeddings = np.array(queue['embeddings'], np.float64)
  queue_labels = np.array(queue['labels'])
  queries = unit(sum(p[num_labelled:] for p in predictions[:NUM_GLOBAL]))
  similarities = np.where(queue_labels != knn.EMPTY, queries @ unit(embeddings).T, -np.inf)
  pseudo_labels = []
  for row in similarities:
    nearest = np.argsort(-row, kind='stable')[: hp.knn_k]
    votes = np.bincount(queue_labels[nearest], minlength=num_classes)
    summed = np.bincount(queue_labels[nearest], weights=row[nearest], minlength=num_classes)
    tied = np.flatnonzero(votes == votes.max())
    pseudo_labels.append(tied[np.argmax(summed[tied])])
  positives = [embeddings[queue_labels == y] for y in np.concatenate([labels, pseudo_labels])]
  assert max(len(p) for p in positives) <= hp.num_semantic_positives  # The draw is fixed.
  written = np.concatenate([t[:num_labelled] for t in targets])
  slots = (int(queue['position']) + np.arange(len(written))) % len(embeddings)
  embeddings[slots], queue_labels[slots] = written, np.tile(labels, NUM_GLOBAL)

  augmentation, semantic = [], []
  for g in range(NUM_GLOBAL):
    for v, h in enumerate(predictions):
      if v == g:
        continue
      logits = h @ targets[g].T / temperature
      for i in range(len(h)):
        negatives = np.exp(np.delete(logits[i], i)).sum()
        nce = lambda logit: -np.log(np.exp(logit) / (np.exp(logit) + negatives))
        augmentation.append(nce(logits[i, i]))
        terms = [nce(h[i] @ p / temperature) for p in positives[i]]
        semantic.append(np.mean(terms) if terms else 0.0)
  classifier = np.mean(
    [
      cross_entropy(np.eye(num_classes)[labels], linear(online['classifier'], f[:num_labelled]))
      for f in features[:NUM_GLOBAL]
    ]
  )
  invariance = []
  for g in range(NUM_GLOBAL):
    for v in range(NUM_GLOBAL):
      if v != g:
        p = np.exp(log_softmax(predictions[v] @ targets[g].T / temperature))
        q = np.exp(log_softmax(predictions[g] @ targets[v].T / temperature))
        invariance.extend(np.sum(p * np.log(p / q), axis=1))
  weight = hp.semantic_weight * min(1.0, (step + 1) / (hp.semantic_warmup_steps + 1))
  terms = {
    'loss_augmentation': np.mean(augmentation),
    'loss_semantic': np.mean(semantic),
    'loss_classifier': classifier,
    'semantic_positives_found': np.mean([len(p) for p in positives]) / hp.num_semantic_positives,
  }
  loss = terms['loss_augmentation'] + weight * terms['loss_semantic'] + classifier
  if hp.invariance_weight:
    terms['loss_invariance'] = np.mean(invariance)
    loss += hp.invariance_weight * terms['loss_invariance']
  new_queue = {
    'embeddings': embeddings,
    'labels': queue_labels,
    'position': (int(queue['position']) + len(written)) % len(embeddings),
  }
  return loss, terms, new_queue


def semppl_queue(rng):
  """48 entries, next write at slot 40: slots 8-18 hold one entry of each of labels 0-5, three
  of 8 and two of 9, the rest is empty, so that no label has more than 3 entries, and labels 6,
  7 and 9 fewer. The step's 16 labelled projections (labels 0-7 of both global views) go over
  slots 40-47 and 0-7 after the draw."""
  labels = np.full(48, knn.EMPTY, np.int32)
  labels[8:19] = [0, 1, 2, 3, 4, 5, 8, 8, 8, 9, 9]
  return {
    'embeddings': unit(rng.normal(size=(48, 8))).astype(np.float32),
    'labels': labels,
    'position': np.int32(40),
  }


# ReLICv2's options: 15 negatives of 16 images (every other one, so the draw is fixed), the
# invariance penalty, and a draw of positives per pair (fixed by the queue).
@pytest.mark.parametrize(
  'options', [{}, dict(num_negatives=15, invariance_weight=0.7, fresh_positives=True)]
)
def test_semppl_loss_matches_numpy(pixel_backbone, options):
  config = test_semppl.tiny_config(
    mlp_layers=1,
    knn_k=3,
    num_semantic_positives=3,
    semantic_weight=0.8,
    semantic_warmup_steps=3,
    **options,
  )
  config.augment.num_local_crops = NUM_LOCAL
  method = semppl.SemPPL(config, DIGITS, one_device_mesh())
  graphdef, rest, params = random_params(method, seed=0)
  target = random_params(method, seed=2)[2]
  rng = np.random.default_rng(1)
  batch = {
    'labelled': {'views': random_views(rng, 8), 'labels': np.arange(8)},
    'unlabelled': {'views': random_views(rng, 8)},
  }
  queue = semppl_queue(rng)
  step = 1  # Semantic weight 0.8 * (1 + 1) / (3 + 1).

  @jax.jit
  def loss(params, state, batch, key):
    model = nnx.merge(graphdef, params, rest, copy=True)
    return method.loss(model, state, batch, key, jnp.int32(step))

  state = to_jax({'target': target, 'queue': queue})
  got, (new_state, metrics) = loss(params, state, to_jax(batch), jax.random.PRNGKey(0))
  expected, terms, expected_queue = semppl_reference(
    as_numpy(params), as_numpy(target), queue, batch, config.semppl, step, 10
  )
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  for name, value in terms.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-5, err_msg=name)
  assert 0 < terms['semantic_positives_found'] < 1  # Some labels have fewer than S entries.
  np.testing.assert_allclose(
    new_state['queue']['embeddings'], expected_queue['embeddings'], rtol=1e-5, atol=1e-6
  )
  np.testing.assert_array_equal(new_state['queue']['labels'], expected_queue['labels'])
  assert int(new_state['queue']['position']) == expected_queue['position'] == 8
  # Another key draws the same positives: the queue leaves no choice.
  np.testing.assert_allclose(
    loss(params, state, to_jax(batch), jax.random.PRNGKey(5))[0], got, rtol=1e-6
  )


# ---------------------------------------------------------------------------------------------
# The weighted kNN probe.


def knn_reference(queries, bank, bank_labels, bank_valid, k, temperature, num_classes):
  """DINO's weighted kNN, brute force: the k valid bank entries most cosine-similar to each
  query (ties: the earlier entry), each voting exp(similarity / T) for its label; the class of
  the largest sum (ties: the smaller class)."""
  similarities = unit(queries.astype(np.float64)) @ unit(bank.astype(np.float64)).T
  predictions = []
  for row in similarities:
    nearest = [j for j in np.argsort(-row, kind='stable') if bank_valid[j]][:k]
    votes = np.zeros(num_classes)
    for j in nearest:
      votes[bank_labels[j]] += np.exp(row[j] / temperature)
    predictions.append(np.argmax(votes))
  return np.array(predictions)


def knn_case(rng):
  """A bank of 40 entries (the last 5 padding, labelled 3 and nearest to queries 0-4), labels
  never 3 or 7; entries 10-12 are one vector under labels 5, 4 and 1, and queries 0-2 are that
  vector scaled: three neighbours tied at the top, so both the k-th neighbour and the vote
  tie."""
  bank = rng.normal(size=(40, 6)).astype(np.float32)
  bank[11] = bank[12] = bank[10]
  labels = rng.choice([0, 1, 2, 4, 5, 6, 8, 9], size=40).astype(np.int32)
  labels[10:13] = [5, 4, 1]
  valid = np.arange(40) < 35
  queries = rng.normal(size=(30, 6)).astype(np.float32)
  queries[:3] = bank[10] * np.array([[1.0], [2.0], [0.5]], np.float32)
  bank[35:], labels[35:] = queries[:5] * 3.0, 3  # Padding: nearest of all, never a vote.
  return queries, bank, labels, valid


@pytest.mark.parametrize('k', [1, 2, 3, 5, 20, 40])
@pytest.mark.parametrize('temperature', [0.07, 1.0])
def test_weighted_knn_matches_brute_force(k, temperature):
  queries, bank, labels, valid = knn_case(np.random.default_rng(0))
  got = jax.jit(evaluate.weighted_knn_predict, static_argnames=('k', 'temperature', 'num_classes'))(
    queries, bank, labels, valid, k=k, temperature=temperature, num_classes=10
  )
  expected = knn_reference(queries, bank, labels, valid, k, temperature, 10)
  np.testing.assert_array_equal(got, expected)
  assert not np.isin(got, [3, 7]).any()
  # Queries 0-2: the earliest of the tied entries 10-12 (labels 5, 4, 1) are the neighbours,
  # and among equal votes the smaller class wins.
  if k <= 3:
    np.testing.assert_array_equal(got[:3], {1: 5, 2: 4, 3: 1}[k])
