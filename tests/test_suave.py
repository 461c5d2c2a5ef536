"""Suave: the loss against hand-computed values, target sources, options."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from semi_ssl import config_base, parallel, train
from semi_ssl.data import augment, datasets, pipeline
from semi_ssl.methods import base, suave
from semi_ssl.methods.views import student_outputs
from semi_ssl.ops import losses, mixup, sinkhorn


def test_labelled_loss_equals_hand_computed_value():
  # Cosine scores (0.5, -0.5), temperature 0.1 -> logits (5, -5); smoothed target (0.995, 0.005):
  # CE = 0.995 log(1 + e^-10) + 0.005 (10 + log(1 + e^-10)) = log(1 + e^-10) + 0.05.
  scores = [jnp.array([[0.5, -0.5]]), jnp.array([[0.5, -0.5]])]
  targets = losses.class_targets(jnp.array([0]), 2, 2, smoothing=0.01)
  np.testing.assert_allclose(targets, [[0.995, 0.005]], rtol=1e-6)
  loss = losses.labelled_loss(scores, targets, temperature=0.1)
  np.testing.assert_allclose(loss, [np.log1p(np.exp(-10)) + 0.05], rtol=1e-5)


def test_swapped_loss_pairs_each_view_with_the_other_global_views():
  # Views 0, 1 global and 2 local; q0, q1 the global assignments. Pairs: (q0: v1, v2), (q1: v0, v2).
  s = [jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]]), jnp.array([[0.0, 0.0]])]
  q = [jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]])]
  ce = lambda logits, t: -np.sum(np.asarray(t) * jax.nn.log_softmax(np.asarray(logits) / 0.5))
  expected = np.mean([ce(s[1], q[0]), ce(s[2], q[0]), ce(s[0], q[1]), ce(s[2], q[1])])
  np.testing.assert_allclose(losses.swapped_assignment_loss(s, q, 0.5), [expected], rtol=1e-6)
  assert expected > ce(s[0], q[0])


def test_combine_weights_terms_by_their_share_of_the_batch():
  loss = losses.combine(jnp.array([1.0, 1.0]), jnp.array([4.0, 4.0, 4.0, 4.0, 4.0, 4.0]))
  np.testing.assert_allclose(loss, (2 * 1.0 + 6 * 4.0) / 8)


def test_combine_by_crops_weights_terms_by_their_share_of_the_crops():
  # 2 examples of 1 crop, 6 of 3 crops, 2 of 1 crop: 2, 18 and 2 of 22 crops.
  terms = jnp.array([1.0, 1.0]), jnp.full(6, 4.0), jnp.array([9.0, 9.0])
  loss = losses.combine(*terms, views=(1, 3, 1))
  np.testing.assert_allclose(loss, (2 * 1.0 + 18 * 4.0 + 2 * 9.0) / 22, rtol=1e-6)
  np.testing.assert_allclose(losses.combine(*terms), (2 + 24 + 18) / 10, rtol=1e-6)


def test_class_targets_are_zero_on_extra_prototypes():
  t = losses.class_targets(jnp.array([2, 0]), 3, 5, smoothing=0.0)
  np.testing.assert_array_equal(t, [[0, 0, 1, 0, 0], [1, 0, 0, 0, 0]])


def _config(**suave_overrides):
  c = config_base.load_config_file('configs/suave/digits.py')
  c.model.width = 0.25
  c.labelled_batch_size, c.batch_size = 8, 16
  c.optimizer.warmup_steps = 0  # The first step already updates.
  c.augment.num_local_crops = 0  # Cheaper to compile; local-crop pairing is tested by hand above.
  c.suave.update(suave_overrides)
  return c


@pytest.fixture(scope='module')
def digits():
  c = _config()
  return datasets.load(c)


def _setup(config, splits):
  method = suave.Suave(
    config, base.DataInfo(splits.num_classes, splits.image_shape), parallel.create_mesh()
  )
  tx, schedule = train.create_optimizer(config, config.num_steps)
  graphdef, state = train.init_state(method, tx, 0)
  aug = augment.augment_config_from(config, splits.mean, splits.std, splits.image_shape)
  raw = pipeline.host_batch(splits, 0, seed=0, labelled_batch_size=8, batch_size=16)
  views = {
    'labelled': {
      'views': augment.multi_crop(jax.random.key(0), raw['labelled']['images'], aug),
      'labels': jnp.asarray(raw['labelled']['labels']),
    },
    'unlabelled': {
      'views': augment.multi_crop(jax.random.key(1), raw['unlabelled']['images'], aug)
    },
  }
  return method, graphdef, state, views, (tx, schedule, aug, raw)


def _loss_metrics(method, graphdef, state, views):
  @jax.jit
  def metrics(state, views):
    model = nnx.merge(graphdef, state.params, state.model_state, copy=True)
    return method.loss(model, state.method_state, views, jax.random.key(2), state.step)[1][1]

  return metrics(state, views)


def test_unlabelled_term_never_sees_a_label(digits):
  method, graphdef, state, views, _ = _setup(_config(), digits)
  assert set(views['unlabelled']) == {'views'}
  before = _loss_metrics(method, graphdef, state, views)
  shuffled = {
    **views,
    'labelled': {**views['labelled'], 'labels': (views['labelled']['labels'] + 1) % 10},
  }
  after = _loss_metrics(method, graphdef, state, shuffled)
  np.testing.assert_allclose(after['loss_unlabelled'], before['loss_unlabelled'], rtol=1e-6)
  assert abs(float(after['loss_labelled']) - float(before['loss_labelled'])) > 1e-3


class ScoresAreInputs:
  """Stand-in for PrototypeModel whose prototype scores are its input views [N, 1, 1, K]."""

  def backbone(self, x, *, train):
    return x.reshape(x.shape[0], -1)

  def embed_features(self, features, *, train):
    return features

  def prototypes(self, z):
    return z


def test_labelled_targets_are_the_labels():
  """Where each view's scores / temperature are the log of the smoothed one-hot of a class,
  the cross-entropy against exactly that target has zero gradient, against any other a large
  one: labelled rows get zero gradient for their labels and a large one for other labels,
  unlabelled rows (Sinkhorn targets, not labels) a large one."""
  method = suave.Suave(
    _config(label_smoothing=0.1, mixup_alpha=0.0),
    base.DataInfo(10, (8, 8, 1)),
    parallel.create_mesh(),
  )
  smoothed = lambda classes: 0.9 * np.eye(10)[classes] + 0.01
  views_of = lambda classes: (
    [jnp.asarray(0.1 * np.log(smoothed(classes)), jnp.float32).reshape(-1, 1, 1, 10)] * 2
  )
  labels = np.array([3, 0, 7, 3])

  @jax.jit
  def gradients(labelled_views, unlabelled_views, labels):
    def loss(labelled_views, unlabelled_views):
      batch = {
        'labelled': {'views': labelled_views, 'labels': labels},
        'unlabelled': {'views': unlabelled_views},
      }
      return method.loss(ScoresAreInputs(), {}, batch, jax.random.key(0), jnp.int32(0))[0]

    return jax.grad(loss, argnums=(0, 1))(labelled_views, unlabelled_views)

  unlabelled = views_of(np.array([1, 1, 4, 5, 9, 9]))
  labelled_grads, unlabelled_grads = gradients(views_of(labels), unlabelled, labels)
  np.testing.assert_allclose(np.stack(labelled_grads), 0.0, atol=1e-6)
  assert np.abs(np.stack(unlabelled_grads)).max() > 1e-2
  other_labels = gradients(views_of(labels), unlabelled, (labels + 1) % 10)[0]
  assert np.abs(np.stack(other_labels)).max() > 1e-2


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_official_mixing_and_crop_weights_by_hand():
  """The official ImageNet recipe's options on 4 labelled images (one view of their own) and
  6 unlabelled ones (2 global views and a third), every view 2 x 5 pixels that the stand-in
  model reads as its 10 prototype scores. By hand, from the draws of `mixup.pixel_weights`:
  the labelled batch is extended by its mixes with the mirror images (clean rows first,
  train_top1 on them); the unlabelled global view 0 mixed with view 1 in reverse targets
  lam q_0 + (1 - lam) q_1[::-1] of their Sinkhorn assignments and stays out of the swapped
  term; the terms weigh 8, 18 and 6 of the 32 crops. Keys that draw both mixup and CutMix."""
  config = _config(
    mixup_alpha=1.0,
    cutmix_alpha=1.0,
    mixup_mode='extend',
    mixup_unlabelled=True,
    loss_weighting='crops',
  )
  hp = config.suave
  method = suave.Suave(config, base.DataInfo(10, (2, 5, 1)), parallel.create_mesh())
  rng = np.random.default_rng(0)
  labels = np.array([3, 0, 7, 3])
  labelled = 0.3 * rng.normal(size=(4, 2, 5, 1)).astype(np.float32)
  unlabelled = list(0.3 * rng.normal(size=(3, 6, 2, 5, 1)).astype(np.float32))
  batch = {
    'labelled': {'views': [labelled], 'labels': labels},
    'unlabelled': {'views': unlabelled},
  }
  loss_of = jax.jit(lambda key: method.loss(ScoresAreInputs(), {}, batch, key, jnp.int32(0)))
  flat = lambda x: np.asarray(x).reshape(len(x), 10)
  ce = lambda x, t: -(t * _log_softmax(flat(x) / hp.temperature)).sum(-1)
  draw = lambda key: [
    np.asarray(a) for a in mixup.pixel_weights(key, 2, 5, mixup_alpha=1.0, cutmix_alpha=1.0)
  ]
  mix = lambda w, x1, x2: w[None, :, :, None] * x1 + (1 - w[None, :, :, None]) * x2[::-1]
  q = [
    np.asarray(
      sinkhorn.sinkhorn(
        jnp.asarray(flat(u)), epsilon=hp.sinkhorn_epsilon, num_iters=hp.sinkhorn_iters
      )
    )
    for u in unlabelled[:2]
  ]
  loss_u = np.mean([ce(unlabelled[v], q[g]) for g in range(2) for v in range(3) if v != g])
  targets = np.eye(10)[labels] * (1 - hp.label_smoothing) + hp.label_smoothing / 10
  drew_cutmix = []
  for seed in range(4):
    key = jax.random.key(seed)
    loss, (_, metrics) = loss_of(key)
    labelled_key, unlabelled_key = jax.random.split(key)
    w, lam = draw(labelled_key)
    mixed_targets = lam * targets + (1 - lam) * targets[::-1]
    loss_l = np.mean([*ce(labelled, targets), *ce(mix(w, labelled, labelled), mixed_targets)])
    w, lam = draw(unlabelled_key)
    drew_cutmix.append(bool(np.all((w == 0) | (w == 1))))
    mixed_q = lam * q[0] + (1 - lam) * q[1][::-1]
    loss_m = np.mean(ce(mix(w, unlabelled[0], unlabelled[1]), mixed_q))
    np.testing.assert_allclose(metrics['loss_labelled'], loss_l, rtol=1e-5)
    np.testing.assert_allclose(metrics['loss_unlabelled'], loss_u, rtol=1e-5)
    np.testing.assert_allclose(metrics['loss_mixed_unlabelled'], loss_m, rtol=1e-5)
    np.testing.assert_allclose(loss, (8 * loss_l + 18 * loss_u + 6 * loss_m) / 32, rtol=1e-5)
    top1 = np.mean(flat(labelled).argmax(-1) == labels)
    np.testing.assert_allclose(metrics['train_top1'], top1)
  assert any(drew_cutmix) and not all(drew_cutmix)


def test_targets_come_from_the_same_forward_pass(digits):
  """Without a teacher, the loss is the one assembled by hand from one student pass: the
  unlabelled global views target the Sinkhorn of their own detached scores, BatchNorm's
  running statistics move only with the student's passes (no second pass over the global
  views), and the queue takes that pass's embeddings."""
  config = _config(queue_size=24)  # 16 unlabelled images a step: not full, so not used yet.
  method, graphdef, state, views, _ = _setup(config, digits)
  hp, key = config.suave, jax.random.key(2)
  stats = lambda m: jax.tree.leaves(nnx.state(m, nnx.BatchStat))

  @jax.jit
  def run(state, views):
    model = lambda: nnx.merge(graphdef, state.params, state.model_state, copy=True)
    suave_model = model()
    loss, (method_state, _) = method.loss(suave_model, state.method_state, views, key, state.step)
    by_hand = model()
    targets, (_, labelled_scores), (embeds, scores) = student_outputs(
      by_hand,
      views,
      key,
      num_classes=10,
      num_prototypes=10,
      label_smoothing=hp.label_smoothing,
      mixup_alpha=hp.mixup_alpha,
    )
    assignments = [
      sinkhorn.sinkhorn(
        jax.lax.stop_gradient(s), epsilon=hp.sinkhorn_epsilon, num_iters=hp.sinkhorn_iters
      )
      for s in scores[:2]
    ]
    expected = losses.combine(
      losses.labelled_loss(labelled_scores, targets, hp.temperature),
      losses.swapped_assignment_loss(scores, assignments, hp.temperature),
    )
    # The former targets: a second pass of the unlabelled global views alone.
    second_pass = model()
    student_outputs(
      second_pass,
      views,
      key,
      num_classes=10,
      num_prototypes=10,
      label_smoothing=hp.label_smoothing,
      mixup_alpha=hp.mixup_alpha,
    )
    second_pass.embed(jnp.concatenate(views['unlabelled']['views'][:2]), train=True)
    return (
      loss,
      expected,
      method_state,
      embeds[:2],
      stats(suave_model),
      stats(by_hand),
      stats(second_pass),
      stats(model()),
    )

  loss, expected, method_state, embeds, after, by_hand, second_pass, before = run(state, views)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert not any(np.allclose(a, b) for a, b in zip(after, before))  # The student pass moved them.
  for a, b in zip(after, by_hand):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert not all(np.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(after, second_pass))
  # Crop g's unlabelled embeddings of this pass head queue g; the rest is still empty.
  queue = np.asarray(method_state['queue'])
  assert queue.shape == (2, 24, config.suave.embed_dim)
  assert int(method_state['queue_count']) == 16
  for g in range(2):
    np.testing.assert_allclose(queue[g, :16], embeds[g], rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(queue[:, 16:], 0.0)


def test_each_global_crop_has_its_own_fifo_queue():
  """Crop g's newest embeddings head queue g, the oldest drop out, and once full, crop g's
  Sinkhorn problem holds queue g (not the other crop's)."""
  config = _config(queue_size=6, embed_dim=4, sinkhorn_epsilon=1.0)  # Soft assignments.
  method = suave.Suave(config, base.DataInfo(10, (8, 8, 1)), parallel.create_mesh())
  state = method.init_state(None)
  assert state['queue'].shape == (2, 6, 4)
  weights = jax.random.normal(jax.random.key(0), (3, 4))
  prototypes = lambda z: z @ weights.T
  run = lambda s: sinkhorn.sinkhorn(s, epsilon=1.0, num_iters=3)
  steps = []
  for i in range(3):
    keys = jax.random.split(jax.random.key(i + 1), 2)
    embeds = [jax.random.normal(k, (4, 4)) for k in keys]  # Crop g: [B_u=4, D=4].
    scores = [prototypes(z) for z in embeds]
    before = state['queue']
    assignments, state = method._assign(state, embeds, scores, prototypes)
    steps.append(embeds)
    queue = np.asarray(state['queue'])
    for g in range(2):
      np.testing.assert_allclose(queue[g, :4], embeds[g])
      if i == 0:
        np.testing.assert_array_equal(queue[g, 4:], 0.0)
      else:
        np.testing.assert_allclose(queue[g, 4:], steps[i - 1][g][:2])
      if i < 2:  # Not full before this step (0, then 4 of 6 entries): the batch alone.
        np.testing.assert_allclose(assignments[g], run(scores[g]), rtol=1e-6)
      else:
        with_queue = lambda q: run(jnp.concatenate([scores[g], prototypes(q)]))[:4]
        np.testing.assert_allclose(assignments[g], with_queue(before[g]), rtol=1e-5, atol=1e-6)
        assert not np.allclose(assignments[g], with_queue(before[1 - g]), rtol=1e-3)
    assert int(state['queue_count']) == min(4 * (i + 1), 6)


def test_ema_teacher_assigns_with_its_own_pass_and_prototypes(digits):
  method, graphdef, state, views, _ = _setup(_config(ema_momentum=0.9), digits)
  teacher = jax.tree.map(lambda p: p + 0.01, state.params)  # A teacher unlike the student.
  globals_ = views['unlabelled']['views'][:2]
  stats = lambda m: jax.tree.leaves(nnx.state(m, nnx.BatchStat))

  @jax.jit
  def run(teacher, views):
    model = nnx.merge(graphdef, state.params, state.model_state, copy=True)
    embeds, scores, prototypes = method._sinkhorn_inputs(
      model, {'teacher': teacher}, views, None, None
    )
    teacher_model = nnx.merge(graphdef, teacher, state.model_state, copy=True)
    expected = jnp.split(teacher_model(jnp.concatenate(views), train=True), len(views))
    return scores, expected, prototypes(embeds[0]), stats(model)

  scores, expected, rescored, model_stats = run(teacher, globals_)
  for s, e in zip(scores, expected):
    np.testing.assert_allclose(s, e, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rescored, scores[0], rtol=1e-5, atol=1e-6)
  for a, b in zip(
    model_stats,
    jax.tree.leaves(nnx.state(nnx.merge(graphdef, state.params, state.model_state), nnx.BatchStat)),
  ):
    np.testing.assert_array_equal(a, b)  # The teacher's BatchNorm updates are dropped.


def _one_step(config, splits):
  method, graphdef, state, _, (tx, schedule, aug, raw) = _setup(config, splits)
  step = jax.jit(
    functools.partial(
      train.train_step, method=method, graphdef=graphdef, tx=tx, augment_cfg=aug, schedule=schedule
    )
  )
  before = jax.device_get(state)
  after, metrics = step(state, raw)
  assert np.isfinite(metrics['loss'])
  return before, jax.device_get(after)


def test_frozen_prototypes_and_heads_only_warmup(digits):
  before, after = _one_step(_config(freeze_prototypes_steps=5, heads_only_steps=5), digits)
  changed = lambda name: (
    not all(
      np.array_equal(a, b)
      for a, b in zip(jax.tree.leaves(before.params[name]), jax.tree.leaves(after.params[name]))
    )
  )
  assert not changed('prototypes') and not changed('backbone') and changed('projector')
  momentum = lambda state, name: [
    x
    for path, x in jax.tree_util.tree_leaves_with_path(state.opt_state)
    if f"['{name}']" in jax.tree_util.keystr(path)
  ]
  # Nor does weight decay enter their momentum (SGD's trace starts at 0).
  assert all(not np.any(x) for x in momentum(after, 'prototypes') + momentum(after, 'backbone'))
  assert any(np.any(x) for x in momentum(after, 'projector'))


def test_ema_teacher_queue_and_normalized_prototypes(digits):
  """One step's EMA teacher and queues; the prototypes start and stay unit-norm (one compiled
  step for the three: the teacher starts as the unit-norm student)."""
  config = _config(ema_momentum=0.9, queue_size=24, normalize_prototypes=True)
  before, after = _one_step(config, digits)
  kernels = [np.asarray(s.params['prototypes']['kernel'][...]) for s in (before, after)]
  for kernel in kernels:
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=1), 1.0, rtol=1e-6)
  assert not np.allclose(kernels[0], kernels[1], rtol=1e-4)  # The step moved them.
  for t0, p1, t1 in zip(
    jax.tree.leaves(before.method_state['teacher']),
    jax.tree.leaves(after.params),
    jax.tree.leaves(after.method_state['teacher']),
  ):
    np.testing.assert_allclose(t1, 0.9 * t0 + 0.1 * p1, rtol=1e-5, atol=1e-7)
  # Each global crop's 16 unlabelled (teacher) embeddings head its own queue of 24.
  queue = np.asarray(after.method_state['queue'])
  assert queue.shape == (2, 24, config.suave.embed_dim)
  assert int(after.method_state['queue_count']) == 16
  np.testing.assert_allclose(np.linalg.norm(queue[:, :16], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(queue[:, 16:], 0.0)


def test_ema_teacher_prototypes_are_renormalised_before_its_update():
  """main_suave.py lines 577-580: the EMA encoder's prototypes are renormalised too; other
  parameters are not."""
  config = _config(ema_momentum=0.9, normalize_prototypes=True)
  method = suave.Suave(config, base.DataInfo(10, (8, 8, 1)), parallel.create_mesh())
  kernel = np.array([[3.0, 4.0], [0.0, 2.0]], np.float32)
  teacher = {'prototypes': {'kernel': jnp.asarray(kernel)}, 'other': jnp.full((2,), 5.0)}
  params = {'prototypes': {'kernel': jnp.eye(2)}, 'other': jnp.ones((2,))}
  new = method.update_state(params, {'teacher': teacher}, jnp.int32(0))['teacher']
  unit = kernel / np.linalg.norm(kernel, axis=1, keepdims=True)
  np.testing.assert_allclose(new['prototypes']['kernel'], 0.9 * unit + 0.1 * np.eye(2), rtol=1e-6)
  np.testing.assert_allclose(new['other'], 0.9 * 5.0 + 0.1 * 1.0, rtol=1e-6)


def official_cosine_scheduler(base_value, final_value, epochs, niter_per_ep):
  """suave/utils.py at 9adf13d, lines 212-223 (DINO's utils.cosine_scheduler), no warm-up."""
  iters = np.arange(epochs * niter_per_ep)
  return final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))


@pytest.mark.parametrize('schedule', ['cosine', 'constant'])
def test_ema_momentum_schedule(schedule):
  """'cosine': main_suave.py line 453, `cosine_scheduler(args.momentum_encoder, 1, args.epochs,
  len(train_loader))`, the momentum of iteration `it` used after its optimiser step."""
  config = _config(ema_momentum=0.996, ema_momentum_schedule=schedule)
  config.num_steps = 10 * 100  # 10 epochs of 100 iterations.
  method = suave.Suave(config, base.DataInfo(10, (8, 8, 1)), parallel.create_mesh())
  official = official_cosine_scheduler(0.996, 1, 10, 100)
  for it in (0, 1, 250, 500, 999):
    # From a teacher of 0 towards parameters of 1, the teacher becomes 1 - momentum.
    state = {'teacher': {'w': jnp.zeros(())}}
    teacher = method.update_state({'w': jnp.ones(())}, state, jnp.int32(it))['teacher']['w']
    expected = official[it] if schedule == 'cosine' else 0.996
    np.testing.assert_allclose(1.0 - float(teacher), expected, rtol=0, atol=2e-7)


@pytest.mark.parametrize(
  'overrides, message',
  [
    (dict(num_prototypes=5), 'num_prototypes=5 is below the 10 classes'),
    (dict(ema_momentum=1.5), r'ema_momentum=1.5 must be in \[0, 1\]'),
    (dict(queue_size=-1), 'queue_size=-1 must be >= 0'),
    (dict(temperature=0.0), 'temperature=0.0 must be positive'),
    (dict(sinkhorn_epsilon=0.0), 'sinkhorn_epsilon=0.0 must be positive'),
    (dict(ema_momentum_schedule='linear'), "ema_momentum_schedule='linear' is unknown"),
    (dict(cutmix_alpha=-1.0), r'cutmix_alpha=-1.0 must be >= 0'),
    (dict(mixup_mode='mix'), "mixup_mode='mix' is unknown: use 'replace' or 'extend'"),
    (dict(loss_weighting='official'), "loss_weighting='official' is unknown"),
    (
      dict(mixup_alpha=0.0, mixup_unlabelled=True),
      'mixup_unlabelled=True mixes with mixup_alpha and cutmix_alpha',
    ),
  ],
)
def test_bad_hyperparameters_name_the_key(overrides, message):
  """Checked when the method is built, so `config_base.validate` stops the run first."""
  with pytest.raises(ValueError, match=message):
    suave.Suave(_config(**overrides), base.DataInfo(10, (8, 8, 1)), parallel.create_mesh())
  with pytest.raises(ValueError, match=message):
    config_base.validate(_config(**overrides), num_devices=8, workdir=None)


def test_cutmix_needs_labelled_views_of_one_size():
  """The labelled views are the unlabelled ones (8- and 6-pixel crops) unless
  config.augment.labelled gives them their own."""
  config = _config(cutmix_alpha=1.0)
  config.augment.num_local_crops = 1
  with pytest.raises(ValueError, match=r'cutmix_alpha=1.0 .* sizes \[6, 8\]'):
    suave.Suave(config, base.DataInfo(10, (8, 8, 1)), parallel.create_mesh())
  config.augment.labelled = config_base.single_labelled_crop(
    config.augment, family='ours', color_jitter=(0.5,) * 4, grayscale_prob=0.2
  )
  suave.Suave(config, base.DataInfo(10, (8, 8, 1)), parallel.create_mesh())
