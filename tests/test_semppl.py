"""SemPPL: the queue (FIFO, wrap-around, rows split over the devices in the train state,
across steps and a checkpoint restore), the InfoNCE terms against numpy, semantic positives
share the (pseudo-)label, no gradient into the EMA target, config checks, and a short run on
digits split over the 8 virtual devices."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import helpers
from semi_ssl import checkpoint, parallel, train
from semi_ssl.data import datasets, pipeline
from semi_ssl.methods import base, semppl
from semi_ssl.ops import knn, queue

DIGITS = base.DataInfo(num_classes=10, image_shape=(8, 8, 1))


def tiny_config(**semppl_overrides):
  """Digits, a tiny model, 2 global 8x8 views and 1 local 6x6 view, 8 + 8 images, 4 steps."""
  return helpers.tiny_config(
    'semppl',
    labelled_batch_size=8,
    batch_size=8,
    log_every=1,
    eval_every=4,
    keep_checkpoints=5,
    eval=dict(batch_size=64),
    semppl={
      # 6 queue entries per device; 16 enqueued per step, so it wraps at step 3.
      **dict(
        temperature=0.1,
        queue_size=48,
        semantic_weight=1.0,
        classifier_trains_backbone=False,
        target_momentum=0.9,
      ),
      **semppl_overrides,
    },
  )


def test_enqueue_is_fifo_and_wraps_around():
  ring = queue.init(5, 2, labels=True)
  np.testing.assert_array_equal(ring['labels'], [knn.EMPTY] * 5)
  rows = lambda labels: jnp.stack([jnp.asarray(labels, jnp.float32)] * 2, axis=1)
  for labels in ([0, 1, 2], [3, 4, 5], [6]):
    ring = queue.write(ring, rows(labels), jnp.asarray(labels))
  # 0..6 written in order over 5 slots: 5 and 6 overwrote the oldest, 0 and 1.
  np.testing.assert_array_equal(ring['labels'], [5, 6, 2, 3, 4])
  np.testing.assert_array_equal(ring['embeddings'][:, 0], [5, 6, 2, 3, 4])
  assert int(ring['position']) == 2


def test_contrastive_losses_match_numpy():
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  anchors, targets = unit(rng.normal(size=(5, 4))), unit(rng.normal(size=(5, 4)))
  positives = unit(rng.normal(size=(5, 3, 4)))
  valid = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 1]], bool)
  augm, sem = semppl.contrastive_losses(
    *(jnp.asarray(x, jnp.float32) for x in (anchors, targets, positives)), valid, 0.5
  )
  logits = anchors @ targets.T / 0.5
  for i in range(5):
    negatives = np.exp(np.delete(logits[i], i)).sum()
    nce = lambda p: -np.log(np.exp(p) / (np.exp(p) + negatives))
    np.testing.assert_allclose(augm[i], nce(logits[i, i]), rtol=1e-5)
    terms = [nce(anchors[i] @ positives[i, s] / 0.5) for s in range(3) if valid[i, s]]
    np.testing.assert_allclose(sem[i], np.mean(terms) if terms else 0.0, rtol=1e-5)


@pytest.fixture(scope='module')
def tiny():
  """The tiny SemPPL on digits: method, graphdef, parameters, rest and a random batch."""
  method = semppl.SemPPL(tiny_config(), DIGITS, parallel.create_mesh())
  graphdef, params, rest = nnx.split(method.create_model(nnx.Rngs(0)), nnx.Param, ...)
  keys = jax.random.split(jax.random.PRNGKey(1), 7)
  views = lambda ks: [jax.random.normal(k, (8, s, s, 1)) for k, s in zip(ks, (8, 8, 6))]
  batch = {
    'labelled': {'views': views(keys[:3]), 'labels': jax.random.randint(keys[6], (8,), 0, 10)},
    'unlabelled': {'views': views(keys[3:6])},
  }
  return dict(method=method, graphdef=graphdef, params=params, rest=rest, batch=batch)


def test_target_gets_no_gradient_but_is_used(tiny):
  method, graphdef, rest, batch = tiny['method'], tiny['graphdef'], tiny['rest'], tiny['batch']
  online = tiny['params']
  target = nnx.split(method.create_model(nnx.Rngs(1)), nnx.Param, ...)[1]
  empty = queue.init(48, 8, labels=True)

  @jax.jit
  def total(params, target):
    model = nnx.merge(graphdef, params, rest, copy=True)
    state = {'target': target, 'queue': empty}
    return method.loss(model, state, batch, jax.random.PRNGKey(0), jnp.int32(0))[0]

  online_grads, target_grads = jax.grad(total, argnums=(0, 1))(online, target)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(target_grads))
  assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(online_grads['backbone']))
  assert abs(float(total(online, target)) - float(total(online, online))) > 1e-3


def test_semantic_weight_warms_up_linearly(tiny):
  method, graphdef, rest, batch = tiny['method'], tiny['graphdef'], tiny['rest'], tiny['batch']
  state = {'target': tiny['params'], 'queue': queue.init(48, 8, labels=True)}

  @jax.jit
  def weight(step):
    model = nnx.merge(graphdef, tiny['params'], rest, copy=True)
    return method.loss(model, state, batch, jax.random.PRNGKey(0), step)[1][1]['semantic_weight']

  # semantic_weight 1.0 over semantic_warmup_steps 2: 1/3, 2/3, then 1.
  np.testing.assert_allclose(
    [weight(jnp.int32(s)) for s in range(4)], [1 / 3, 2 / 3, 1, 1], rtol=1e-6
  )


def test_semantic_positives_share_the_label_or_the_pseudo_label(tiny):
  method = tiny['method']
  rng = np.random.default_rng(2)
  # Queue entries: the unit vector of their label's direction plus noise; entry i also
  # remembers its index, so each sample can be traced back to its slot.
  queue_labels = rng.integers(0, 10, 48).astype(np.int32)
  queue_labels[:4] = knn.EMPTY
  directions = np.eye(8, dtype=np.float32)[queue_labels % 8]
  embeddings = directions + 0.1 * rng.normal(size=(48, 8)).astype(np.float32)
  embeddings[:, 7] = np.arange(48)  # Not unit-norm: sample_same_label returns keys as they are.
  queue = {
    'embeddings': jnp.asarray(embeddings),
    'labels': jnp.asarray(queue_labels),
    'position': jnp.int32(0),
  }
  labels = jnp.asarray(rng.integers(0, 10, 8), jnp.int32)
  queries = jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)
  positives, valid, votes = jax.jit(method._semantic_positives)(
    jax.random.PRNGKey(3), labels, queries, queue
  )
  pseudo = np.asarray(
    knn.knn_pseudo_labels(queries, queue['embeddings'], queue['labels'], k=3, num_classes=10)[0]
  )
  np.testing.assert_array_equal(votes.sum(axis=1), 3)
  slots = np.asarray(positives[..., 7]).astype(int)
  expected = np.concatenate([np.asarray(labels), pseudo])
  assert valid.shape == (16, 2) and valid.any()
  for row in range(16):
    for s in range(2):
      if valid[row, s]:
        assert queue_labels[slots[row, s]] == expected[row]
      else:
        assert np.sum(queue_labels == expected[row]) < 2


def test_eval_predictions_are_the_knn_pseudo_labels_of_the_predictions(tiny):
  method = tiny['method']
  model = nnx.merge(tiny['graphdef'], tiny['params'], tiny['rest'])
  rng = np.random.default_rng(4)
  queue = {
    'embeddings': jnp.asarray(rng.normal(size=(48, 8)), jnp.float32),
    'labels': jnp.asarray(rng.integers(0, 10, 48), jnp.int32),
    'position': jnp.int32(0),
  }
  images = tiny['batch']['labelled']['views'][0]
  got = jax.jit(method.eval_predictions)(model, {'queue': queue}, images)
  predictions = model(images, train=False)[1]
  want = knn.knn_pseudo_labels(
    predictions, queue['embeddings'], queue['labels'], k=3, num_classes=10
  )[0]
  assert set(got) == {'pseudo_label'}
  np.testing.assert_array_equal(got['pseudo_label'], want)


# 1 - 0.1 (1 + cos(pi / 4)) / 2 = 0.9146447 at step 1, below a linear rise's 0.925.
@pytest.mark.parametrize('step, momentum', [(0, 0.9), (1, 0.9146447), (2, 0.95), (4, 1.0)])
def test_update_state_follows_the_cosine_momentum(tiny, step, momentum):
  """The target's momentum rises on a cosine from target_momentum 0.9 at step 0 to 1 at
  num_steps 4, through their mean at the half (BYOL): a zero target becomes (1 - m) times the
  online parameters."""
  method, params = tiny['method'], tiny['params']
  target = jax.tree.map(jnp.zeros_like, params)
  state = {'target': target, 'queue': queue.init(48, 8, labels=True)}
  new = jax.jit(method.update_state)(params, state, jnp.int32(step))
  jax.tree.map(
    lambda got, p: np.testing.assert_allclose(
      got, (1 - momentum) * np.asarray(p), rtol=1e-5, atol=1e-7
    ),
    new['target'],
    params,
  )
  jax.tree.map(np.testing.assert_array_equal, new['queue'], state['queue'])


@pytest.mark.parametrize(
  'overrides, message',
  [
    (dict(queue_size=44), 'queue_size=44 is not divisible by the 8 devices'),
    (
      dict(queue_size=8, knn_k=1, num_semantic_positives=1),
      'queue_size=8 is below the 16 labelled projections',
    ),
    (dict(knn_k=7), r'knn_k=7 must be in \[1, 6\]'),
    (dict(num_semantic_positives=0), r'num_semantic_positives=0 must be in \[1, 6\]'),
    (dict(temperature=0.0), 'temperature=0.0 must be positive'),
    (dict(target_momentum=1.5), r'target_momentum=1.5 must be in \[0, 1\]'),
  ],
)
def test_bad_hyperparameters_name_the_key(overrides, message):
  with pytest.raises(ValueError, match=message):
    semppl.SemPPL(tiny_config(**overrides), DIGITS, parallel.create_mesh())


def test_queue_rows_are_split_over_the_devices_in_the_train_state():
  """Where the trainer stores (and steps, saves and restores) the state: each of the 8
  devices holds 48 / 8 = 6 queue rows, the rest of the state is replicated."""
  config = tiny_config()
  method = train.create_method(config, datasets.load(config), parallel.create_mesh())
  init = train.state_initializer(method, train.create_optimizer(config, 1)[0], seed=0)[1]
  sharding = train.state_sharding(method, jax.eval_shape(init))
  state = jax.jit(init, out_shardings=sharding)()
  queue = state.method_state['queue']
  for rows in (queue['embeddings'], queue['labels']):
    assert sorted(s.index[0].start for s in rows.addressable_shards) == list(range(0, 48, 6))
    assert {s.data.shape[0] for s in rows.addressable_shards} == {6}
  assert queue['position'].sharding.is_fully_replicated
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params))


def _saved_method_state(workdir, step):
  return helpers.saved_state(workdir, step)['method_state']


def test_queue_across_steps_and_a_checkpoint_restore(tmp_path):
  """4 steps of 16 labelled projections into 48 slots, the queue split over the 8 devices of
  a (data, model) mesh of 4 x 2; the run resumed from its step-2 checkpoint ends with the same
  queue. (On the 8 x 1 mesh: test_method_contracts, the queue of 8 devices equals 1 device's.)"""
  config = tiny_config()
  config.mesh.model = 2
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  assert results['method'] == 'semppl' and results['steps'] == 4
  assert 0.0 <= results['test_top1'] <= 1.0
  final = _saved_method_state(workdir, 4)
  queue = final['queue']
  # Steps 0..3 wrote slots 0-15, 16-31, 32-47, then wrapped: step 3 over 0-15.
  splits = datasets.load(config)
  step_labels = [
    pipeline.host_batch(splits, s, seed=0, labelled_batch_size=8, batch_size=8)['labelled'][
      'labels'
    ]
    for s in range(4)
  ]
  np.testing.assert_array_equal(
    queue['labels'], np.concatenate([np.tile(step_labels[s], 2) for s in (3, 1, 2)])
  )
  assert int(queue['position']) == 16
  np.testing.assert_allclose(np.linalg.norm(queue['embeddings'], axis=1), 1.0, rtol=1e-5)
  # Lose the last checkpoint and the results, as if killed between steps 2 and 4.
  ckpt = checkpoint.Checkpointer(workdir, keep=5)
  ckpt.manager.delete(4)
  ckpt.close()
  os.remove(os.path.join(workdir, train.RESULTS_FILE))
  again = train.train_and_evaluate(config, workdir)
  assert again['steps'] == 4
  jax.tree.map(np.testing.assert_array_equal, _saved_method_state(workdir, 4), final)
