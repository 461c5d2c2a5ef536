"""S4L's pure parts against hand-computed or brute-force references: rotations and their labels,
the batch-hard triplet loss, entropy minimisation's gradient, the VAT perturbation; and the
config checks of methods/s4l.py; MOAM's pseudo-labels and its three stages.
(tests/test_method_contracts.py runs the variants and MOAM's joint stage.)"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

import helpers
import test_references
from semi_ssl import checkpoint, config_base, main, train
from semi_ssl.data import datasets
from semi_ssl.methods import base, s4l, views
from semi_ssl.ops import losses, rotation, vat


def _images(batch=3, side=5, channels=2, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, side, side, channels)))


def test_two_quarter_turns_are_a_half_turn_and_four_are_none():
  images = _images()
  half = rotation.rotate(rotation.rotate(images, 1), 1)
  np.testing.assert_array_equal(half, rotation.rotate(images, 2))
  np.testing.assert_array_equal(half, images[:, ::-1, ::-1])
  np.testing.assert_array_equal(rotation.rotate(rotation.rotate(images, 3), 1), images)


def test_all_rotations_match_their_labels():
  """Row k B + i is image i turned k quarter turns counter-clockwise, labelled k: the pixel at
  the top-left corner comes from the top-right (k=1), bottom-right (2), bottom-left (3)."""
  images = _images()
  rotated, labels = rotation.all_rotations(images)
  assert rotated.shape == (12, 5, 5, 2)
  np.testing.assert_array_equal(labels, np.repeat(np.arange(4), 3))
  corners = {0: (0, 0), 1: (0, -1), 2: (-1, -1), 3: (-1, 0)}
  for row, label in enumerate(np.asarray(labels)):
    y, x = corners[int(label)]
    np.testing.assert_array_equal(rotated[row, 0, 0], images[row % 3, y, x])
    np.testing.assert_array_equal(rotated[row], np.rot90(images[row % 3], int(label)))


def test_random_rotations_turn_each_image_by_its_label():
  images = _images(batch=16)
  rotated, labels = rotation.random_rotations(jax.random.PRNGKey(1), images)
  assert len(set(np.asarray(labels).tolist())) > 1
  for image, turned, label in zip(images, rotated, np.asarray(labels)):
    np.testing.assert_array_equal(turned, np.rot90(image, int(label)))


def _batch_hard_reference(x, ids, margin, soft):
  """The loss by a double loop over anchors and candidates, in float64."""
  x = np.asarray(x, np.float64)
  out = []
  for a in range(len(x)):
    dist = [np.sqrt(max(np.sum((x[a] - x[b]) ** 2), 1e-12)) for b in range(len(x))]
    pos = max(dist[b] for b in range(len(x)) if b != a and ids[b] == ids[a])
    neg = min(dist[b] for b in range(len(x)) if ids[b] != ids[a])
    diff = pos + margin - neg
    out.append(np.log1p(np.exp(diff)) if soft else max(diff, 0.0))
  return np.asarray(out)


@pytest.mark.parametrize('margin, soft', [(0.0, True), (0.5, False), (0.2, True)])
def test_batch_hard_triplet_equals_a_double_loop(margin, soft):
  x = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
  ids = np.tile(np.arange(4), 3)
  got = losses.batch_hard_triplet(jnp.asarray(x), jnp.asarray(ids), margin, soft=soft)
  np.testing.assert_allclose(got, _batch_hard_reference(x, ids, margin, soft), rtol=1e-5, atol=1e-5)


def test_batch_hard_triplet_by_hand():
  """Points 0, 1 (identity 0) and 3, 7 (identity 1) on a line: anchor 0's farthest positive
  is 1 away, its nearest negative 3; anchor 3's are 4 and 2 (from 1)."""
  x = jnp.asarray([[0.0], [1.0], [3.0], [7.0]])
  ids = jnp.asarray([0, 0, 1, 1])
  got = losses.batch_hard_triplet(x, ids, 1.0, soft=False)
  # Anchor 0: 1 + 1 - 3 < 0; 1: 1 + 1 - 2 = 0; 3: 4 + 1 - 2 = 3; 7: 4 + 1 - 6 < 0.
  np.testing.assert_allclose(got, [0.0, 0.0, 3.0, 0.0], atol=1e-6)


def test_entropy_gradient_equals_numpy():
  """d/dz of -sum p log p, p = softmax(z): -p_j (log p_j + H)."""
  logits = np.random.default_rng(0).normal(size=(4, 6))
  got = jax.grad(lambda z: jnp.sum(losses.entropy(z)))(jnp.asarray(logits, jnp.float32))
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  h = -np.sum(p * np.log(p), axis=-1, keepdims=True)
  np.testing.assert_allclose(got, -p * (np.log(p) + h), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(losses.entropy(jnp.zeros((1, 6))), [np.log(6)], rtol=1e-6)


def test_kl_divergence_is_zero_on_itself_and_matches_numpy():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(2, 3, 5))
  p, q = (np.exp(v) / np.exp(v).sum(-1, keepdims=True) for v in (a, b))
  np.testing.assert_allclose(
    losses.kl_divergence(jnp.asarray(a), jnp.asarray(b)), np.sum(p * np.log(p / q), -1), rtol=1e-5
  )
  np.testing.assert_allclose(losses.kl_divergence(jnp.asarray(a), jnp.asarray(a)), 0, atol=1e-6)


def _linear_problem(seed=0):
  rng = np.random.default_rng(seed)
  weights = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)  # 2 x 3 images -> 4 classes.
  images = jnp.asarray(rng.normal(size=(2, 2, 3, 1)), jnp.float32)
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ weights
  return weights, images, logits_fn


def test_vat_direction_is_the_dominant_eigenvector_on_a_linear_model():
  """For logits x W, the Hessian in d of KL(p || softmax((x + d) W)) at 0 is W (diag p - p p^T)
  W^T: many power iterations find its dominant eigenvector (up to sign), each example's own."""
  weights, images, logits_fn = _linear_problem()
  r = vat.perturbation(
    logits_fn,
    images,
    logits_fn(images),
    jax.random.PRNGKey(0),
    xi=1e-2,
    epsilon=2.0,
    num_iterations=30,
  )
  w = np.asarray(weights, np.float64)
  for image, found in zip(np.asarray(images), np.asarray(r)):
    p = np.exp(image.reshape(-1) @ w)
    p /= p.sum()
    hessian = w @ (np.diag(p) - np.outer(p, p)) @ w.T
    top = np.linalg.eigh(hessian)[1][:, -1]
    found = found.reshape(-1)
    np.testing.assert_allclose(np.linalg.norm(found), 2.0, rtol=1e-5)
    assert abs(found @ top) / 2.0 > 0.999


def test_vat_perturbation_has_norm_epsilon_and_beats_a_random_direction():
  """One power iteration (as S4L) on a small nonlinear model: every example's perturbation
  has norm epsilon, and it raises the KL more than random directions of that norm."""
  rng = np.random.default_rng(2)
  w1 = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  w2 = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
  logits_fn = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2
  images = jnp.asarray(rng.normal(size=(32, 4, 4, 1)), jnp.float32)
  clean = logits_fn(images)
  r = vat.perturbation(
    logits_fn, images, clean, jax.random.PRNGKey(3), xi=1e-3, epsilon=0.5, num_iterations=1
  )
  np.testing.assert_allclose(jnp.linalg.norm(r.reshape(32, -1), axis=1), 0.5, rtol=1e-5)
  kl = lambda d: losses.kl_divergence(clean, logits_fn(images + d))
  random = 0.5 * vat.normalize_per_example(jax.random.normal(jax.random.PRNGKey(4), images.shape))
  assert float(jnp.mean(kl(r))) > 3 * float(jnp.mean(kl(random)))
  assert float(jnp.mean(kl(r) > kl(random))) > 0.9


@pytest.mark.parametrize(
  'overrides, match',
  [
    (dict(variant='rotnet'), "variant='rotnet' is unknown"),
    (dict(rotations='some'), "rotations='some' is unknown"),
    (dict(variant='exemplar', num_exemplar_copies=8), 'num_exemplar_copies=8: each image'),
    (dict(variant='vat_entmin', vat_epsilon=0.0), 'vat_epsilon=0.0 must be > 0'),
    (dict(rotation_weight=-1.0), 'rotation_weight=-1.0 must be >= 0'),
    (dict(label_smoothing=1.0), r'label_smoothing=1.0 must be in \[0, 1\)'),
    (dict(variant='moam', stage='distill'), "stage='distill' is unknown"),
    (dict(variant='moam', stage='retrain'), 'set exactly one of workdir'),
    (dict(variant='moam', pseudo_label_weight=-1.0), 'pseudo_label_weight=-1.0 must be >= 0'),
  ],
)
def test_bad_s4l_configs_stop_naming_the_key(overrides, match):
  config = helpers.tiny_config('s4l', s4l=overrides)
  with pytest.raises(ValueError, match=match):
    config_base.validate(config, num_devices=1, workdir=None)


def test_vat_passes_leave_the_running_batchnorm_statistics_alone():
  """A vat_entmin loss on the tiny ResNet moves the running BatchNorm statistics as the clean
  pass alone does: the perturbed passes (a model copy) leave them as they are."""
  config = helpers.tiny_config('s4l', s4l=dict(variant='vat_entmin'))
  mesh = test_references.one_device_mesh()
  method = s4l.S4L(config, base.DataInfo(num_classes=10, image_shape=(8, 8, 1)), mesh)
  model, clean = method.create_model(nnx.Rngs(0)), method.create_model(nnx.Rngs(0))
  images = lambda seed, n: [_images(n, 8, 1, seed), _images(n, 8, 1, seed + 1)]
  batch = {
    'labelled': {'views': images(0, 4), 'labels': jnp.arange(4)},
    'unlabelled': {'views': images(2, 6)},
  }
  loss, (_, metrics) = method.loss(model, {}, batch, jax.random.PRNGKey(0), jnp.int32(0))
  assert np.isfinite(loss) and float(metrics['loss_vat']) > 0
  views.by_size(
    functools.partial(clean.backbone, train=True),
    [*batch['labelled']['views'], *batch['unlabelled']['views']],
  )
  stats, expected = nnx.state(model, nnx.BatchStat), nnx.state(clean, nnx.BatchStat)
  assert jax.tree.leaves(stats)
  jax.tree.map(np.testing.assert_allclose, stats, expected)


def _moam_plan(workdir):
  """MOAM's three stages of 2 steps each on the tiny config (teacher = its model)."""
  c = helpers.tiny_config('s4l', num_steps=2, s4l=dict(variant='moam'))
  c.s4l.teacher.model = c.model
  config_base.s4l_moam_stages(c, retrain={}, finetune={})
  return main.stage_plan(c, str(workdir))


def _pixel_classifier_argmax(variables, images, mean, std):
  """Class predictions [N] and the margin of the top class over the next [N] of the S4L model
  on `PixelBackbone` with the `variables` of a checkpoint, on uint8 images (eval view), numpy."""
  p = variables['params']
  x = (images.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
  features = np.tanh(x @ p['backbone/linear/kernel'] + p['backbone/linear/bias']).mean(axis=(1, 2))
  logits = features @ p['classifier/kernel'] + p['classifier/bias']
  top2 = np.sort(logits, axis=-1)[:, -2:]
  return np.argmax(logits, axis=-1), top2[:, 1] - top2[:, 0]


def test_moam_three_stages_and_the_pseudo_labels_of_the_joint_model(tmp_path, monkeypatch):
  """joint -> retrain -> finetune, each in its directory, DIR/results.json with every stage's;
  retrain's teacher is the joint model and its pseudo-labels (from the pass before its step 0)
  are that model's argmax on every unlabelled image, by numpy; finetune starts from retrain."""
  monkeypatch.setattr(
    base,
    'create_backbone',
    lambda config, data, rngs: test_references.PixelBackbone(data.image_shape[-1], rngs=rngs),
  )
  plan = _moam_plan(tmp_path)
  assert [stage.s4l.stage for stage, _ in plan] == ['joint', 'retrain', 'finetune']
  assert plan[1][0].s4l.teacher.workdir == str(tmp_path / 'joint')
  assert plan[2][0].init_from.workdir == str(tmp_path / 'retrain')
  main.validate_plan(plan, str(tmp_path), num_devices=len(jax.devices()))
  rows = main.run_plan(plan)
  summary = train.read_results(tmp_path / train.RESULTS_FILE)
  assert set(summary['stages']) == {'joint', 'retrain', 'finetune'}
  assert summary['test_top1'] == rows[-1]['test_top1']
  joint = checkpoint.load_variables(plan[0][1])
  retrain = helpers.saved_state(plan[1][1], 2)['method_state']
  assert 'head/kernel' in joint['params']  # The joint model's rotation head, in the teacher too.
  joint_state = helpers.saved_state(plan[0][1], 2)
  for part in ('params', 'model_state'):
    chex.assert_trees_all_equal(retrain['teacher'][part], joint_state[part])
  splits = datasets.load(plan[1][0])
  expected, margin = _pixel_classifier_argmax(
    joint, splits.unlabelled_images, splits.mean, splits.std
  )
  pseudo_labels = retrain['pseudo_labels']
  assert pseudo_labels.dtype == np.int32 and pseudo_labels.shape == expected.shape
  assert len(np.unique(expected)) > 1  # Not one class for every image: the labels tell.
  clear = margin > 1e-5  # Near-ties may round either way in float32.
  assert clear.mean() > 0.9
  np.testing.assert_array_equal(pseudo_labels[clear], expected[clear])
  assert 'teacher' not in helpers.saved_state(plan[2][1], 2)['method_state']
