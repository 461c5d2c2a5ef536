"""Views through the networks (`methods/views.py`): one backbone call per view size, the heads
once on all views, BatchNorm moving once per size; and the labelled images' own crop spec
(`config.augment.labelled`) from the config to the train step and the methods."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from semi_ssl import config_base, methods, parallel, train
from semi_ssl.data import augment, datasets, pipeline
from semi_ssl.methods import base, supervised, views
from semi_ssl.models import resnet
from semi_ssl.models.prototypes import PrototypeModel
from helpers import tiny_config

DIGITS = base.DataInfo(num_classes=10, image_shape=(8, 8, 1))
# A labelled spec unlike the unlabelled views of the digits configs: one 6-pixel crop.
LABELLED = dict(
  family='ours',
  num_crops=1,
  size=6,
  scale=(0.5, 1.0),
  flip=True,
  color_jitter=(0.0, 0.0, 0.0, 0.0),
  grayscale_prob=0.0,
  blur_prob=0.5,
  solarize_prob=0.0,
)


def _views(seed, sizes, batch=4):
  """Random normalised views [batch, s, s, 1], one per size in `sizes`."""
  keys = jax.random.split(jax.random.key(seed), len(sizes))
  return [jax.random.normal(k, (batch, s, s, 1)) for k, s in zip(keys, sizes)]


def _prototype_model(seed=0):
  config = config_base.get_base_config()
  config.model.width = 0.25
  rngs = nnx.Rngs(seed)
  return PrototypeModel(
    base.create_backbone(config, DIGITS, rngs),
    hidden_dim=16,
    embed_dim=8,
    num_layers=2,
    num_prototypes=10,
    rngs=rngs,
  )


def _batch_stats(model):
  return jax.tree.leaves(nnx.state(model, nnx.BatchStat))


def _assert_trees_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_eval_outputs_equal_one_call_per_view():
  model = _prototype_model()
  inputs = _views(0, (8, 6, 8, 6, 6))  # Sizes need not be consecutive.
  calls = []
  backbone = lambda x: calls.append(x.shape) or model.backbone(x, train=False)
  features = views.by_size(backbone, inputs)
  assert calls == [(8, 8, 8, 1), (12, 6, 6, 1)]  # One call per size, in order of appearance.
  _, scores = views.prototype_outputs(model, inputs, train=False)
  for view, f, s in zip(inputs, features, scores, strict=True):
    np.testing.assert_allclose(f, model.backbone(view, train=False), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s, model(view, train=False), rtol=1e-5, atol=1e-6)


def test_train_outputs_equal_one_pass_of_the_concatenated_views():
  """Backbone over each size's views concatenated, then the heads over all of them: outputs
  and the BatchNorm statistics they leave, against the passes written out by hand."""
  grouped, by_hand = _prototype_model(), _prototype_model()
  before = _batch_stats(by_hand)
  l6, u8a, u8b, u6 = _views(1, (6, 8, 8, 6))
  u6 = u6[:3]  # Views of one size may hold different numbers of rows.
  embeds, scores = views.prototype_outputs(grouped, [l6, u8a, u8b, u6], train=True)

  features = jnp.concatenate(
    [
      by_hand.backbone(jnp.concatenate([l6, u6]), train=True),
      by_hand.backbone(jnp.concatenate([u8a, u8b]), train=True),
    ]
  )
  z = by_hand.embed_features(features, train=True)
  s = by_hand.prototypes(z)
  rows = {'l6': slice(0, 4), 'u6': slice(4, 7), 'u8a': slice(7, 11), 'u8b': slice(11, 15)}
  for got_z, got_s, name in zip(embeds, scores, ('l6', 'u8a', 'u8b', 'u6')):
    np.testing.assert_allclose(got_z, z[rows[name]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_s, s[rows[name]], rtol=1e-5, atol=1e-6)
  _assert_trees_close(_batch_stats(grouped), _batch_stats(by_hand))
  assert not all(np.allclose(a, b) for a, b in zip(_batch_stats(grouped), before))


def test_batch_norm_moves_once_per_size():
  """2 global + 4 local crops: the running statistics are exactly two EMA updates, from the
  batch statistics of the globals concatenated, then of the locals concatenated."""
  m = 0.9
  bn = nnx.BatchNorm(3, momentum=m, rngs=nnx.Rngs(0))
  keys = jax.random.split(jax.random.key(2), 6)
  inputs = [2.0 + jax.random.normal(k, (5, 8, 8, 3)) for k in keys[:2]] + [
    jax.random.normal(k, (5, 4, 4, 3)) for k in keys[2:]
  ]
  outputs = views.by_size(lambda x: bn(x, use_running_average=False), inputs)
  assert [o.shape for o in outputs] == [v.shape for v in inputs]

  groups = [np.concatenate(inputs[:2]), np.concatenate(inputs[2:])]
  mean, var = np.zeros(3), np.ones(3)
  for g in groups:
    mean = m * mean + (1 - m) * g.mean(axis=(0, 1, 2))
    var = m * var + (1 - m) * g.var(axis=(0, 1, 2))  # Flax: the biased batch variance.
  np.testing.assert_allclose(bn.mean[...], mean, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(bn.var[...], var, rtol=1e-6, atol=1e-7)
  per_view = np.zeros(3)
  for v in inputs:
    per_view = m * per_view + (1 - m) * np.asarray(v).mean(axis=(0, 1, 2))
  assert not np.allclose(bn.mean[...], per_view, rtol=1e-3)  # What six calls would give.


def _digits_config(method: str, labelled=None):
  """configs/<method>/digits.py with a narrow backbone, 8 + 8 images a step, and the
  labelled crop spec `labelled` (None: the unlabelled views)."""
  c = config_base.load_config_file(f'configs/{method}/digits.py')
  c.model.width = 0.25
  c.labelled_batch_size, c.batch_size = 8, 8
  c.augment.labelled = labelled
  return c


@pytest.mark.parametrize('method_name, teacher_calls', [('suave', 0), ('daino', 1)])
def test_labelled_views_of_their_own_join_the_unlabelled_pass(
  method_name, teacher_calls, monkeypatch
):
  """One labelled 6-pixel view (mixed up) with 2 global 8-pixel and 2 local 6-pixel unlabelled
  views: the student's backbone runs once per size, the labelled view with the local crops;
  the teacher (Daino) once on the global views. The loss is finite."""
  config = _digits_config(method_name, ml_collections.ConfigDict(LABELLED))
  assert config[method_name].mixup_alpha > 0
  config_base.validate(config, num_devices=8, workdir=None)
  method = methods.REGISTRY[method_name](config, DIGITS, parallel.create_mesh())
  graphdef, params, rest = nnx.split(method.create_model(nnx.Rngs(0)), nnx.Param, ...)
  batch = {
    'labelled': {'views': _views(3, (6,)), 'labels': jnp.arange(4)},
    'unlabelled': {'views': _views(4, (8, 8, 6, 6), batch=8)},
  }
  calls = []
  forward = resnet.ResNet.__call__
  monkeypatch.setattr(
    resnet.ResNet, '__call__', lambda self, x, **kw: calls.append(x.shape) or forward(self, x, **kw)
  )

  @jax.jit
  def loss(params, batch):
    model = nnx.merge(graphdef, params, rest, copy=True)
    return method.loss(model, method.init_state(params), batch, jax.random.key(0), jnp.int32(0))

  value, (_, metrics) = loss(params, batch)
  assert calls == [(4 + 16, 6, 6, 1), (16, 8, 8, 1)] + [(16, 8, 8, 1)] * teacher_calls
  assert np.isfinite(float(value)) and np.isfinite(float(metrics['loss_labelled']))


class _ViewSpy(supervised.Supervised):
  """Returns the views the train step built, as its metrics."""

  def loss(self, model, state, batch, key, step):
    return jnp.zeros(()), (state, {'views': batch})


def _step_views(config):
  """(views the train step gives the method, the step's keys, raw batch, augment config)."""
  splits = datasets.load(config)
  method = _ViewSpy(
    config, base.DataInfo(splits.num_classes, splits.image_shape), parallel.create_mesh()
  )
  tx, schedule = train.create_optimizer(config, config.num_steps)
  graphdef, state = train.init_state(method, tx, config.seed)
  aug = augment.augment_config_from(config, splits.mean, splits.std, splits.image_shape)
  raw = pipeline.host_batch(splits, 0, seed=0, labelled_batch_size=4, batch_size=8)
  step = jax.jit(
    functools.partial(
      train.train_step, method=method, graphdef=graphdef, tx=tx, augment_cfg=aug, schedule=schedule
    )
  )
  _, metrics = step(state, raw)
  # The keys train_step draws the labelled and unlabelled views with.
  keys = jax.random.split(jax.random.fold_in(state.key, state.step), 3)[:2]
  return metrics['views'], keys, raw, aug


def test_labelled_stream_gets_its_own_spec_and_the_default_todays_views():
  config = tiny_config(labelled_batch_size=4, batch_size=8)
  config.augment.num_local_crops = 1
  default, (labelled_key, unlabelled_key), raw, aug = _step_views(config)
  assert aug.labelled is None and aug.labelled_views is aug
  multi_crop = jax.jit(augment.multi_crop, static_argnames='cfg')
  expected = multi_crop(labelled_key, raw['labelled']['images'], cfg=aug)
  assert len(default['labelled']['views']) == 3
  # The same key gives today's views, to float32 rounding: XLA may fuse the augmentation in
  # the train step otherwise than in `multi_crop` alone (1 ulp apart with the older emitters).
  for got, want in zip(default['labelled']['views'], expected, strict=True):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)

  config.augment.labelled = ml_collections.ConfigDict(LABELLED)
  own, _, raw, aug = _step_views(config)
  assert [v.shape for v in own['labelled']['views']] == [(4, 6, 6, 1)]
  expected = multi_crop(labelled_key, raw['labelled']['images'], cfg=aug.labelled)
  np.testing.assert_allclose(own['labelled']['views'][0], expected[0], rtol=0, atol=1e-6)
  assert [v.shape for v in own['unlabelled']['views']] == [(8, 8, 8, 1)] * 2 + [(8, 6, 6, 1)]
  for got, want in zip(own['unlabelled']['views'], default['unlabelled']['views'], strict=True):
    np.testing.assert_array_equal(got, want)  # The unlabelled views do not change.


def test_labelled_spec_config():
  config = _digits_config(
    'suave',
    ml_collections.ConfigDict(
      {
        **LABELLED,
        'family': 'byol',
        'num_crops': 2,
        'color_jitter': (0.4, 0.4, 0.2, 0.1),
        'solarize_prob': 0.2,
      }
    ),
  )
  cfg = augment.augment_config_from(config, (0.5,), (0.25,), (8, 8, 1)).labelled
  assert cfg.global_crops == augment.CropSpec(2, 6, (0.5, 1.0)) and cfg.local_crops is None
  assert (cfg.family, cfg.flip, cfg.color_jitter, cfg.grayscale_prob) == (
    'byol',
    True,
    (0.4, 0.4, 0.2, 0.1),
    0.0,
  )
  assert (cfg.blur_prob, cfg.solarize_prob, cfg.local_blur_prob) == ((0.5,), (0.2,), 0.0)
  assert (cfg.mean, cfg.std, cfg.labelled) == ((0.5,), (0.25,), None)


@pytest.mark.parametrize(
  'change, message',
  [
    (dict(num_crops=0), 'config.augment.labelled.num_crops=0 must be >= 1'),
    (dict(size=9), r'config.augment.labelled.size=9 is larger than the stored images \(8'),
    (dict(scale=(0.9, 0.5)), r'config.augment.labelled.scale=\(0.9, 0.5\) must be an ordered'),
    (dict(scale='big'), "config.augment.labelled.scale='big' must be a tuple of floats"),
    (
      dict(color_jitter=(0.4, 0.4, 0.2, -0.1)),
      r'config.augment.labelled.color_jitter=\(0.4, 0.4, 0.2, -0.1\) must be the \(brightness',
    ),
    (dict(family='simclrv1'), "config.augment.labelled.family='simclrv1' is unknown"),
    (dict(blur_prob=1.5), 'config.augment.labelled.blur_prob=1.5 is not a probability'),
    (
      dict(solarize_prob=(0.1,)),
      r'config.augment.labelled.solarize_prob=\(0.1,\) must be one '
      'probability',
    ),
    (dict(blur=0.5), 'config.augment.labelled.blur is unknown; its keys are num_crops, size'),
    (dict(size=None), 'config.augment.labelled lacks size: give all of num_crops'),
    (None, 'config.augment.labelled=3 must be a ConfigDict'),
  ],
)
def test_bad_labelled_spec_is_one_line_naming_the_key(change, message):
  """Through `config_base.validate`, before anything runs."""
  if change is None:
    labelled = 3
  else:
    labelled = {key: value for key, value in {**LABELLED, **change}.items() if value is not None}
    labelled = ml_collections.ConfigDict(labelled)
  with pytest.raises(ValueError, match=message) as error:
    config_base.validate(_digits_config('suave', labelled), num_devices=8, workdir=None)
  assert '\n' not in str(error.value)


def test_semppl_refuses_a_labelled_spec():
  """It contrasts labelled and unlabelled images alike, view by view."""
  with pytest.raises(ValueError, match='leave config.augment.labelled unset') as error:
    config_base.validate(
      _digits_config('semppl', ml_collections.ConfigDict(LABELLED)), num_devices=8, workdir=None
    )
  assert '\n' not in str(error.value)
