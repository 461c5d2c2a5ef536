"""Daino: no gradient into the teacher, EMA / centring / schedule math against numpy, where
the targets come from, the whole loss by hand on a hand-made example, and a short run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import helpers
from semi_ssl import checkpoint, methods, metric_writer, parallel, train
from semi_ssl.methods import base, daino
from semi_ssl.ops import ema

DIGITS = base.DataInfo(num_classes=10, image_shape=(8, 8, 1))


def tiny_config(**daino_overrides):
  """Digits, a tiny model, 2 global 8x8 views and 1 local 6x6 view, 8 + 8 images, 3 steps; no
  mixup, a slow teacher whose temperature warms up over 10 steps."""
  return helpers.tiny_config(
    'daino',
    labelled_batch_size=8,
    batch_size=8,
    num_steps=3,
    log_every=1,
    eval_every=3,
    checkpoint_every=3,
    daino={
      **dict(
        label_smoothing=0.1,
        teacher_temperature=0.07,
        teacher_temperature_warmup_start=0.04,
        teacher_temperature_warmup_steps=10,
        teacher_momentum=0.99,
        mixup_alpha=0.0,
      ),
      **daino_overrides,
    },
  )


def random_batch(seed, num_labelled=4, num_unlabelled=6):
  """Normalised views of random images: 2 global [N, 8, 8, 1], 1 local [N, 6, 6, 1]."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 7)
  views = lambda ks, n: [jax.random.normal(k, (n, s, s, 1)) for k, s in zip(ks, (8, 8, 6))]
  return {
    'labelled': {
      'views': views(keys[:3], num_labelled),
      'labels': jax.random.randint(keys[6], (num_labelled,), 0, 10),
    },
    'unlabelled': {'views': views(keys[3:6], num_unlabelled)},
  }


@pytest.fixture(scope='module')
def tiny():
  """The tiny Daino on digits: method, student params, a different teacher, jitted loss."""
  config = tiny_config()
  method = daino.Daino(config, DIGITS, parallel.create_mesh())
  graphdef, params, rest = nnx.split(method.create_model(nnx.Rngs(0)), nnx.Param, ...)
  teacher = nnx.split(method.create_model(nnx.Rngs(1)), nnx.Param, ...)[1]

  @jax.jit
  def loss(params, state, batch):
    model = nnx.merge(graphdef, params, rest, copy=True)
    return method.loss(model, state, batch, jax.random.PRNGKey(0), jnp.int32(0))

  return dict(config=config, method=method, params=params, teacher=teacher, loss=loss)


def test_ema_update_matches_numpy(tiny):
  method, params, teacher = tiny['method'], tiny['params'], tiny['teacher']
  center, step = jnp.arange(10.0), 1
  new = jax.jit(method.update_state)(
    params, {'teacher': teacher, 'center': center}, jnp.int32(step)
  )
  m = 1 - (1 - 0.99) * (math.cos(math.pi * step / tiny['config'].num_steps) + 1) / 2
  jax.tree.map(
    lambda got, t, p: np.testing.assert_allclose(
      got, m * np.asarray(t) + (1 - m) * np.asarray(p), rtol=1e-6, atol=1e-7
    ),
    new['teacher'],
    teacher,
    params,
  )
  np.testing.assert_array_equal(new['center'], center)


def test_init_state_copies_the_params_and_zeroes_the_center(tiny):
  state = tiny['method'].init_state(tiny['params'])
  jax.tree.map(np.testing.assert_array_equal, state['teacher'], tiny['params'])
  np.testing.assert_array_equal(state['center'], np.zeros(10))


def test_momentum_schedule_endpoints():
  m = lambda step: float(ema.cosine_momentum(jnp.int32(step), 100, 0.996))
  np.testing.assert_allclose([m(0), m(50), m(100), m(150)], [0.996, 0.998, 1.0, 1.0], rtol=1e-6)
  assert m(0) < m(10) < m(90) < m(100)


def test_teacher_temperature_warms_up_linearly_then_stays():
  t = lambda step, warmup: float(
    daino.teacher_temperature(jnp.int32(step), start=0.04, end=0.07, warmup_steps=warmup)
  )
  np.testing.assert_allclose(
    [t(0, 30), t(15, 30), t(30, 30), t(99, 30)], [0.04, 0.055, 0.07, 0.07], rtol=1e-6
  )
  assert t(0, 0) == pytest.approx(0.07)  # No warm-up.


def dino_teacher_temp_schedule(warmup_teacher_temp, teacher_temp, warmup_epochs, nepochs):
  """DINOLoss.teacher_temp_schedule, github.com/facebookresearch/dino at 7c446df, main_dino.py
  lines 374-377 (daino/main_daino.py lines 613-617): one temperature per epoch."""
  return np.concatenate(
    (
      np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs),
      np.ones(nepochs - warmup_epochs) * teacher_temp,
    )
  )


@pytest.mark.parametrize('warmup_epochs', [1, 4])
def test_teacher_temperature_warms_up_once_an_epoch_as_dino(warmup_epochs):
  epoch_steps, epochs = 7, 6
  steps = jnp.arange(epochs * epoch_steps)
  got = daino.teacher_temperature(
    steps, start=0.04, end=0.07, warmup_steps=warmup_epochs * epoch_steps, epoch_steps=epoch_steps
  )
  official = dino_teacher_temp_schedule(0.04, 0.07, warmup_epochs, epochs)
  np.testing.assert_allclose(got, official[np.asarray(steps) // epoch_steps], rtol=1e-6)


def test_heads_and_their_parameter_paths():
  """'swav' (the digits default): the parameters of before the option; 'dino': no BatchNorm,
  and with norm_last_layer=False a learnt magnitude per prototype."""

  def paths(**overrides):
    method = daino.Daino(tiny_config(**overrides), DIGITS, parallel.create_mesh())
    model = nnx.eval_shape(lambda: method.create_model(nnx.Rngs(0)))
    names = lambda f: {'/'.join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, f))}
    return names(nnx.Param), names(nnx.BatchStat)

  swav_params, swav_stats = paths()
  assert 'projector/hidden/0/bn/scale' in swav_params and 'projector/hidden/0/bn/mean' in swav_stats
  assert {p for p in swav_params if p.startswith('prototypes')} == {'prototypes/kernel'}
  dino_params, dino_stats = paths(head='dino', norm_last_layer=False)
  assert not any(p.startswith('projector') for p in dino_stats)
  assert {'projector/hidden/0/linear/bias', 'prototypes/magnitude'} <= dino_params
  assert dino_params - swav_params == {
    'projector/hidden/0/linear/bias',
    'prototypes/magnitude',
  } and swav_params - dino_params == {'projector/hidden/0/bn/scale', 'projector/hidden/0/bn/bias'}


def test_targets_are_centred_and_sharpened():
  scores = [np.array([[0.9, 0.1, -0.5], [0.2, 0.3, 0.1]], np.float32)]
  center = np.array([0.3, -0.1, 0.0], np.float32)
  z = (scores[0] - center) / 0.05
  expected = np.exp(z - z.max(1, keepdims=True))
  expected /= expected.sum(1, keepdims=True)
  got = daino.teacher_targets([jnp.asarray(scores[0])], jnp.asarray(center), 0.05)[0]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
  # A lower temperature sharpens: the largest probability grows.
  sharper = daino.teacher_targets([jnp.asarray(scores[0])], jnp.asarray(center), 0.01)[0]
  assert np.all(sharper.max(1) > got.max(1))


def test_center_update_matches_numpy():
  scores = [np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.5, 0.5], [1.0, -1.0]])]
  center = np.array([0.2, -0.2])
  batch_mean = np.concatenate(scores).mean(0)  # [0.625, 0.125]
  got = daino.update_center(jnp.asarray(center), [jnp.asarray(s) for s in scores], 0.9)
  np.testing.assert_allclose(got, 0.9 * center + 0.1 * batch_mean, rtol=1e-6)


def test_labelled_targets_are_labels_and_unlabelled_targets_come_from_the_teacher(tiny):
  loss, params = tiny['loss'], tiny['params']
  state = {'teacher': tiny['teacher'], 'center': jnp.zeros(10)}
  batch = random_batch(0)
  relabelled = {
    **batch,
    'labelled': {**batch['labelled'], 'labels': (batch['labelled']['labels'] + 3) % 10},
  }
  _, (state_a, metrics_a) = loss(params, state, batch)
  _, (_, metrics_b) = loss(params, state, relabelled)
  assert float(metrics_a['loss_unlabelled']) == float(metrics_b['loss_unlabelled'])
  assert float(metrics_a['loss_labelled']) != pytest.approx(float(metrics_b['loss_labelled']))
  # New labelled images and labels leave what the teacher sees (its scores, hence the new
  # center) unchanged: the targets come from the unlabelled global views alone.
  new_labelled = {**batch, 'labelled': random_batch(1)['labelled']}
  _, (state_c, _) = loss(params, state, new_labelled)
  np.testing.assert_array_equal(state_c['center'], state_a['center'])
  # And another teacher changes the unlabelled term.
  _, (_, metrics_d) = loss(params, {**state, 'teacher': params}, batch)
  assert float(metrics_d['loss_unlabelled']) != pytest.approx(float(metrics_a['loss_unlabelled']))


class LinearScores(nnx.Module):
  """Stand-in for PrototypeModel with known scores: flattened [N, 1, 1, K] views @ W [K, K]."""

  def __init__(self, kernel: np.ndarray):
    self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))

  def backbone(self, x, *, train):
    return x.reshape(x.shape[0], -1)

  def embed_features(self, features, *, train):
    return features

  def prototypes(self, embeddings):
    return embeddings @ self.kernel[...]


# A hand-made example: 1 labelled + 2 unlabelled images, K = 3 prototypes (C = 2 classes),
# 2 global + 1 local views, each view a row of 3 numbers that LinearScores maps to scores.
STUDENT_W = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5], [0.5, 0.5, 0.0]])
TEACHER_W = np.array([[0.8, 0.1, 0.0], [0.2, 0.9, 0.0], [0.0, 0.0, 1.0]])
CENTER = np.array([0.1, -0.1, 0.0])
LABELLED = [np.array([[1.0, 0.0, 0.0]]), np.array([[0.5, 0.5, 0.0]]), np.array([[0.0, 1.0, 1.0]])]
UNLABELLED = [
  np.array([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
  np.array([[0.2, 0.0, 1.0], [0.0, 0.3, 0.0]]),
  np.array([[1.0, 0.0, 1.0], [0.5, 0.0, 0.5]]),
]


def hand_made(labelled=LABELLED, **daino_overrides):
  """Daino's loss of (student params, teacher params) on the hand-made example (or its
  `labelled` views)."""
  config = tiny_config(
    num_prototypes=3,
    student_temperature=0.5,
    teacher_temperature=0.2,
    teacher_temperature_warmup_steps=0,
    label_smoothing=0.1,
    **daino_overrides,
  )
  method = daino.Daino(
    config, base.DataInfo(num_classes=2, image_shape=(8, 8, 1)), parallel.create_mesh()
  )
  graphdef, _ = nnx.split(LinearScores(STUDENT_W), nnx.Param)
  as_images = lambda vs: [jnp.asarray(v, jnp.float32).reshape(len(v), 1, 1, 3) for v in vs]
  batch = {
    'labelled': {'views': as_images(labelled), 'labels': jnp.array([1])},
    'unlabelled': {'views': as_images(UNLABELLED)},
  }

  def loss_of(params, teacher):
    state = {'teacher': teacher, 'center': jnp.asarray(CENTER, jnp.float32)}
    return method.loss(
      nnx.merge(graphdef, params), state, batch, jax.random.PRNGKey(0), jnp.int32(0)
    )

  return loss_of


def linear_params(kernel):
  return nnx.state(LinearScores(kernel), nnx.Param)


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_loss_on_a_hand_made_example_matches_numpy():
  loss_of = hand_made()
  loss, (state, _) = loss_of(linear_params(STUDENT_W), linear_params(TEACHER_W))
  # By hand: labelled target [0.05, 0.95, 0] (smoothing 0.1 over C=2, zero on prototype 3).
  target = np.array([0.05, 0.95, 0.0])
  loss_l = np.mean([-(target * _log_softmax(v @ STUDENT_W / 0.5)).sum() for v in LABELLED])
  q = [np.exp(_log_softmax((u @ TEACHER_W - CENTER) / 0.2)) for u in UNLABELLED[:2]]
  log_p = [_log_softmax(u @ STUDENT_W / 0.5) for u in UNLABELLED]
  pairs = [-(q[g] * log_p[v]).sum(-1) for g in range(2) for v in range(3) if v != g]
  loss_u = np.mean(pairs, axis=0)  # Per unlabelled image: [2].
  expected = (1 * loss_l + 2 * loss_u.mean()) / 3  # Weighted by share of the batch.
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  teacher_mean = np.concatenate([u @ TEACHER_W for u in UNLABELLED[:2]]).mean(0)
  np.testing.assert_allclose(state['center'], 0.9 * CENTER + 0.1 * teacher_mean, rtol=1e-5)


@pytest.mark.parametrize(
  'weighting, mixup_mode, labelled_crops',
  [('images', None, 1), ('crops', None, 1), ('crops', 'extend', 2)],
)
def test_loss_weighting_counts_images_or_crops(weighting, mixup_mode, labelled_crops):
  """One labelled image with one view of its own, two unlabelled images of three views:
  'images' weighs the terms 1/3 and 2/3; 'crops' (main_daino.py) 1/7 and 6/7, or with the
  labelled batch extended by its mix 2/8 and 6/8 (one image mixes with itself, so the mix
  is the image and the labelled term is unchanged)."""
  mixing = dict(mixup_alpha=1.0, mixup_mode=mixup_mode) if mixup_mode else {}
  loss_of = hand_made(LABELLED[:1], loss_weighting=weighting, **mixing)
  loss, (_, metrics) = loss_of(linear_params(STUDENT_W), linear_params(TEACHER_W))
  target = np.array([0.05, 0.95, 0.0])
  loss_l = -(target * _log_softmax(LABELLED[0] @ STUDENT_W / 0.5)).sum()
  np.testing.assert_allclose(metrics['loss_labelled'], loss_l, rtol=1e-5)
  labelled_weight = labelled_crops / (labelled_crops + (6 if weighting == 'crops' else 2))
  expected = labelled_weight * loss_l + (1 - labelled_weight) * metrics['loss_unlabelled']
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_teacher_gets_no_gradient_but_is_used():
  loss_of = hand_made()
  total = lambda params, teacher: loss_of(params, teacher)[0]
  student, teacher = linear_params(STUDENT_W), linear_params(TEACHER_W)
  student_grads, teacher_grads = jax.grad(total, argnums=(0, 1))(student, teacher)
  np.testing.assert_array_equal(teacher_grads['kernel'][...], np.zeros((3, 3)))
  assert np.abs(student_grads['kernel'][...]).min() > 0
  # The zero gradient is the stop-gradient, not an unused teacher: the loss depends on it.
  assert abs(float(total(student, teacher)) - float(total(student, student))) > 1e-3


@pytest.mark.parametrize(
  'overrides, message',
  [
    (dict(num_prototypes=5), 'num_prototypes=5 is below the 10 classes'),
    (dict(teacher_momentum=1.5), 'teacher_momentum=1.5 must be in'),
    (dict(teacher_temperature=0.0), 'teacher_temperature=0.0 must be positive'),
    (dict(teacher_temperature_warmup_steps=-1), 'teacher_temperature_warmup_steps=-1'),
    (dict(teacher_temperature_update_steps=3), 'teacher_temperature_update_steps=3 must be 0'),
    (dict(head='vit'), "head='vit' is unknown"),
  ],
)
def test_bad_hyperparameters_name_the_key(overrides, message):
  with pytest.raises(ValueError, match=message):
    daino.Daino(tiny_config(**overrides), DIGITS, parallel.create_mesh())


def test_one_view_is_refused():
  config = tiny_config()
  config.augment.num_global_crops, config.augment.num_local_crops = 1, 0
  with pytest.raises(ValueError, match='num_global_crops=2'):
    daino.Daino(config, DIGITS, parallel.create_mesh())


def test_twelve_step_run_on_digits_trains_the_student_teacher_and_center(tmp_path, monkeypatch):
  """A run (no warm-up) lowers the loss by a fifth from its first three steps to its last
  three, moves the teacher (which stays unlike the student) and the center (finite, not 0)
  between its checkpoints at steps 6 and 12."""
  monkeypatch.setitem(methods.REGISTRY, 'daino', daino.Daino)
  logged = []
  record = metric_writer.RunWriter.train

  def train_metrics(self, step, values):
    logged.append((step, dict(values)))
    record(self, step, values)

  monkeypatch.setattr(metric_writer.RunWriter, 'train', train_metrics)
  config = tiny_config()
  config.update(num_steps=12, eval_every=12, checkpoint_every=6)
  config.optimizer.warmup_steps = 0
  workdir = tmp_path / 'run'
  results = train.train_and_evaluate(config, str(workdir))
  assert results['method'] == 'daino' and results['steps'] == 12
  assert 0.0 <= results['test_top1'] <= 1.0
  # The teacher's figures, as main_daino.py validates the teacher: in results.json, and not
  # the student's (the teacher, a slow EMA, is still near the initial model).
  saved_results = train.read_results(workdir / train.RESULTS_FILE)
  teacher = [saved_results[f'teacher_{key}'] for key in ('top1', 'top5', 'knn_top1')]
  assert all(0.0 <= figure <= 1.0 for figure in teacher)
  assert teacher != [saved_results[key] for key in ('test_top1', 'test_top5', 'knn_top1')]
  losses = [float(v['loss']) for _, v in logged if 'loss' in v]
  assert len(losses) == 12 and all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
  saved = [
    checkpoint.read_state(workdir / checkpoint.CHECKPOINT_DIR / str(step) / 'state')
    for step in (6, 12)
  ]
  differs = lambda a, b: any(
    not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )
  assert differs(saved[1]['method_state']['teacher'], saved[0]['method_state']['teacher'])
  assert differs(saved[1]['method_state']['teacher'], saved[1]['params'])
  centers = [np.asarray(s['method_state']['center']) for s in saved]
  assert all(np.isfinite(c).all() and np.abs(c).max() > 0 for c in centers)
  assert not np.array_equal(centers[1], centers[0])
