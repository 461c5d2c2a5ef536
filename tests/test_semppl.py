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
  # Anchor i's negatives: 2 of the other rows, or (row 4) all of them.
  negatives = np.array(
    [[0, 1, 0, 1, 0], [1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [1, 0, 1, 0, 0], [1, 1, 1, 1, 0]], bool
  )
  augm, sem = semppl.contrastive_losses(
    *(jnp.asarray(x, jnp.float32) for x in (anchors, targets, positives)), valid, negatives, 0.5
  )
  logits = anchors @ targets.T / 0.5
  for i in range(5):
    negative_mass = np.exp(logits[i][negatives[i]]).sum()
    nce = lambda p: -np.log(np.exp(p) / (np.exp(p) + negative_mass))
    np.testing.assert_allclose(augm[i], nce(logits[i, i]), rtol=1e-5)
    terms = [nce(anchors[i] @ positives[i, s] / 0.5) for s in range(3) if valid[i, s]]
    np.testing.assert_allclose(sem[i], np.mean(terms) if terms else 0.0, rtol=1e-5)
  # Anchor 0's loss: no gradient (nor NaN) into the targets outside its contrast set {0, 1, 3}.
  grad = jax.grad(
    lambda t: semppl.contrastive_losses(anchors, t, positives, valid, negatives, 0.5)[0][0]
  )(jnp.asarray(targets, jnp.float32))
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[[0, 1, 3]] != 0)
  np.testing.assert_array_equal(np.asarray(grad)[[2, 4]], 0.0)


def test_sample_negatives_draws_distinct_other_images():
  """num_negatives 3 of 7 images: each row marks exactly 3 others, never itself; the draw
  depends on the key, and over draws every other image is some anchor's negative."""
  draws = [np.asarray(semppl.sample_negatives(jax.random.PRNGKey(k), 7, 3)) for k in range(20)]
  for negatives in draws:
    np.testing.assert_array_equal(negatives.sum(axis=1), 3)
    assert not np.diagonal(negatives).any()
  assert any((d != draws[0]).any() for d in draws[1:])
  np.testing.assert_array_equal(np.any(draws, axis=0), ~np.eye(7, dtype=bool))
  np.testing.assert_array_equal(semppl.sample_negatives(None, 4, 0), ~np.eye(4, dtype=bool))


def test_invariance_penalty_is_the_kl_of_the_contrast_distributions():
  """KL(p || q) over each anchor's contrast set (itself and its negatives), against numpy;
  0 where the two views' distributions agree; no gradient into q."""
  rng = np.random.default_rng(5)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  a1, t1, a2, t2 = (jnp.asarray(unit(rng.normal(size=(4, 3))), jnp.float32) for _ in range(4))
  negatives = jnp.asarray(
    [[0, 1, 1, 0], [1, 0, 0, 1], [0, 1, 0, 1], [1, 1, 1, 0]], bool
  )  # 2 or 3 negatives per anchor.
  penalty = lambda a1, a2: semppl.invariance_penalty(
    semppl.contrast_log_probs(a1, t1, negatives, 0.5),
    semppl.contrast_log_probs(a2, t2, negatives, 0.5),
    negatives,
  )
  got = penalty(a1, a2)
  contrast = np.asarray(negatives) | np.eye(4, dtype=bool)
  for i in range(4):
    p = np.exp(np.asarray(a1[i] @ t1.T / 0.5)[contrast[i]])
    q = np.exp(np.asarray(a2[i] @ t2.T / 0.5)[contrast[i]])
    p, q = p / p.sum(), q / q.sum()
    np.testing.assert_allclose(got[i], np.sum(p * np.log(p / q)), rtol=1e-4, atol=1e-7)
  assert np.all(np.asarray(got) > 0)
  same = semppl.contrast_log_probs(a1, t1, negatives, 0.5)
  np.testing.assert_allclose(semppl.invariance_penalty(same, same, negatives), 0.0, atol=1e-6)
  grad_p, grad_q = jax.grad(lambda a1, a2: jnp.sum(penalty(a1, a2)), argnums=(0, 1))(a1, a2)
  assert np.all(np.isfinite(grad_p)) and np.any(grad_p != 0)
  np.testing.assert_array_equal(grad_q, 0.0)


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
  positives, valid, votes = jax.jit(method._semantic_positives, static_argnums=4)(
    jax.random.PRNGKey(3), labels, queries, queue, 3
  )
  pseudo = np.asarray(
    knn.knn_pseudo_labels(queries, queue['embeddings'], queue['labels'], k=3, num_classes=10)[0]
  )
  np.testing.assert_array_equal(votes.sum(axis=1), 3)
  slots = np.asarray(positives[..., 7]).astype(int)
  expected = np.concatenate([np.asarray(labels), pseudo])
  assert valid.shape == (3, 16, 2) and valid.any()
  for draw, row, s in np.ndindex(valid.shape):
    if valid[draw, row, s]:
      assert queue_labels[slots[draw, row, s]] == expected[row]
    else:
      assert np.sum(queue_labels == expected[row]) < 2
  # The 3 draws are independent: they differ (each image's label has ~4 entries to draw from).
  assert (slots[0] != slots[1]).any() and (slots[1] != slots[2]).any()


def _step_metrics(method, tiny, queue, key=0):
  """The metrics of one loss evaluation at step 5 on the tiny batch, from `queue`."""
  model = nnx.merge(tiny['graphdef'], tiny['params'], tiny['rest'], copy=True)
  state = {'target': tiny['params'], 'queue': queue}
  return method.loss(model, state, tiny['batch'], jax.random.PRNGKey(key), jnp.int32(5))[1][1]


def test_a_labelled_anchor_never_draws_its_own_current_projection(tiny):
  """The queue holds only label 9, the labelled images none of it: their labels' only entries
  would be this step's own projections, which enter the queue after the draw. So only the 8
  unlabelled anchors (pseudo-label 9) find positives: half of all."""
  labelled = dict(tiny['batch']['labelled'], labels=jnp.arange(8, dtype=jnp.int32))
  tiny = dict(tiny, batch=dict(tiny['batch'], labelled=labelled))
  rng = np.random.default_rng(6)
  queue = {
    'embeddings': jnp.asarray(rng.normal(size=(48, 8)), jnp.float32),
    'labels': jnp.full((48,), 9, jnp.int32),
    'position': jnp.int32(0),
  }
  metrics = jax.jit(lambda q: _step_metrics(tiny['method'], tiny, q))(queue)
  np.testing.assert_allclose(metrics['semantic_positives_found'], 0.5)


@pytest.mark.parametrize('fresh, draws', [(False, 1), (True, 4)])
def test_fresh_positives_draw_once_per_view_target_pair(tiny, monkeypatch, fresh, draws):
  """3 views x 2 global targets, less the 2 pairs of a view with itself: 4 pairs, each with
  its own draw under fresh_positives, one draw shared by all otherwise."""
  method = semppl.SemPPL(tiny_config(fresh_positives=fresh), DIGITS, parallel.create_mesh())
  asked = []
  draw = method._semantic_positives
  monkeypatch.setattr(
    method, '_semantic_positives', lambda *args: asked.append(args[-1]) or draw(*args)
  )
  jax.eval_shape(lambda q: _step_metrics(method, tiny, q), queue.init(48, 8, labels=True))
  assert asked == [draws]


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
    (dict(num_negatives=16), r'num_negatives=16 must be in \[0, 15\]'),
    (dict(invariance_weight=-1.0), 'invariance_weight=-1.0 must be >= 0'),
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
