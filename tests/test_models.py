"""Tests for semi_ssl.models (ResNet backbones, MLP heads, prototypes)."""

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semi_ssl.models import MLP, Prototypes, create_backbone


# One input shape for every resnet_tiny test, so eager ops compile only once.
TINY_BATCH = (2, 8, 8, 1)


def _rngs() -> nnx.Rngs:
  # RBG keys compile several times faster than threefry on CPU, which is most
  # of the cost of initialising a model eagerly.
  return nnx.Rngs(jax.random.key(0, impl='rbg'))


def _tiny(**kwargs):
  return create_backbone(
    'resnet_tiny', width=1.0, stem='tiny', num_channels=1, rngs=_rngs(), **kwargs
  )


@pytest.fixture(scope='module')
def tiny_init():
  return _tiny()


@pytest.fixture
def tiny(tiny_init):
  """A fresh copy of resnet_tiny (width 1) at initialisation."""
  return nnx.clone(tiny_init)


@pytest.fixture(scope='module')
def resnet18():
  return create_backbone('resnet18', width=0.25, stem='cifar', num_channels=3, rngs=_rngs())


def _images(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape, np.float32)


def _num_params(model: nnx.Module) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _batch_stats(model: nnx.Module):
  return jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))


def _check_features(model, shape, feature_dim):
  assert model.feature_dim == feature_dim
  for train in (True, False):
    out = model(_images(shape), train=train)
    chex.assert_shape(out, (shape[0], feature_dim))
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)


def test_resnet_tiny_output_shape(tiny):
  _check_features(tiny, TINY_BATCH, 64)


def test_resnet18_cifar_output_shape(resnet18):
  _check_features(nnx.clone(resnet18), (2, 32, 32, 3), 128)


def test_resnet50_imagenet_output_shape():
  model = create_backbone('resnet50', width=0.25, stem='imagenet', num_channels=3, rngs=_rngs())
  _check_features(model, (2, 64, 64, 3), 512)


@pytest.mark.parametrize(
  'kwargs,match',
  [
    (dict(name='resnet34', stem='cifar'), 'resnet18'),
    (dict(name='resnet18', stem='mnist'), 'imagenet'),
  ],
)
def test_create_backbone_rejects_unknown_names(kwargs, match):
  with pytest.raises(ValueError, match=match):
    create_backbone(**kwargs, width=1.0, num_channels=3, rngs=_rngs())


def test_backbone_rejects_wrong_channel_count(tiny):
  with pytest.raises(ValueError, match='num_channels'):
    tiny(jnp.zeros((2, 8, 8, 3)), train=False)


def test_param_counts_match_torchvision():
  # torchvision resnet18: 11,689,512 - fc (512*1000 + 1000) - 7x7x3x64 stem
  # + 3x3x3x64 CIFAR stem. resnet50: 25,557,032 - fc (2048*1000 + 1000).
  resnet18 = nnx.eval_shape(
    lambda: create_backbone('resnet18', width=1.0, stem='cifar', num_channels=3, rngs=_rngs())
  )
  resnet50 = nnx.eval_shape(
    lambda: create_backbone('resnet50', width=1.0, stem='imagenet', num_channels=3, rngs=_rngs())
  )
  assert _num_params(resnet18) == 11_689_512 - 513_000 - 9_408 + 1_728
  assert _num_params(resnet50) == 25_557_032 - 2_049_000


def test_init_he_normal_and_zero_residual_scale(resnet18):
  last = resnet18.blocks[-1]
  kernel = np.asarray(last.conv2.conv.kernel[...])  # [3, 3, 128, 128]
  np.testing.assert_allclose(kernel.std(), np.sqrt(2 / (9 * 128)), rtol=0.03)
  np.testing.assert_array_equal(last.conv2.bn.scale[...], 0.0)
  np.testing.assert_array_equal(last.conv1.bn.scale[...], 1.0)
  plain = create_backbone(
    'resnet18', width=0.25, stem='cifar', num_channels=3, rngs=_rngs(), zero_init_residual=False
  )
  np.testing.assert_array_equal(plain.blocks[-1].conv2.bn.scale[...], 1.0)


def test_projection_shortcut_only_when_shape_changes(resnet18):
  has_projection = [block.shortcut is not None for block in resnet18.blocks]
  assert has_projection == [False, False, True, False, True, False, True, False]


def test_bfloat16_compute_matches_float32(tiny):
  forward = nnx.jit(lambda model, x: model(x, train=True))
  x = _images(TINY_BATCH)
  model16 = _tiny(dtype=jnp.bfloat16)
  out16 = forward(model16, x)
  params = jax.tree.leaves(nnx.state(model16, nnx.Param))
  assert all(p.dtype == jnp.float32 for p in params)
  chex.assert_type(out16, jnp.float32)
  chex.assert_tree_all_finite(out16)
  np.testing.assert_allclose(out16, forward(tiny, x), rtol=0.05, atol=0.05)


def test_train_updates_batch_stats_and_eval_is_deterministic(tiny):
  x = _images(TINY_BATCH)
  before = _batch_stats(tiny)
  out_a = tiny(x, train=False)
  out_b = tiny(x, train=False)
  np.testing.assert_array_equal(out_a, out_b)
  chex.assert_trees_all_equal(_batch_stats(tiny), before)

  stem_out = np.asarray(tiny.stem.conv(x))  # [B, 8, 8, 16]
  tiny(x, train=True)
  # Running stats start at mean 0 / var 1 and move 10% toward the batch stats.
  np.testing.assert_allclose(
    tiny.stem.bn.mean[...], 0.1 * stem_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    tiny.stem.bn.var[...], 0.9 + 0.1 * stem_out.var(axis=(0, 1, 2)), rtol=1e-4
  )
  after = _batch_stats(tiny)
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), after, before))
  assert all(changed)


def test_split_merge_round_trip_in_jit(tiny):
  x = _images(TINY_BATCH)
  graphdef, params, batch_stats = nnx.split(tiny, nnx.Param, nnx.BatchStat)

  @jax.jit
  def forward(params, batch_stats, x):
    model = nnx.merge(graphdef, params, batch_stats)
    return model(x, train=True), nnx.state(model, nnx.BatchStat)

  out, new_stats = forward(params, batch_stats, x)
  expected = tiny(x, train=True)  # Eager step on the original model.
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(new_stats, nnx.state(tiny, nnx.BatchStat), rtol=1e-5, atol=1e-6)
  restored = nnx.merge(graphdef, params, new_stats)
  np.testing.assert_allclose(restored(x, train=False), tiny(x, train=False), rtol=1e-5, atol=1e-5)


def test_grad_through_merged_model_in_jit(tiny):
  graphdef, params, batch_stats = nnx.split(tiny, nnx.Param, nnx.BatchStat)

  def loss_fn(params, batch_stats, x):
    # copy=True: batch_stats come from the enclosing trace, not from grad's.
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    loss = jnp.mean(model(x, train=True) ** 2)
    return loss, nnx.state(model, nnx.BatchStat)

  grad_fn = jax.jit(jax.grad(loss_fn, has_aux=True))
  grads, new_stats = grad_fn(params, batch_stats, _images(TINY_BATCH))
  chex.assert_trees_all_equal_structs(grads, params)
  chex.assert_tree_all_finite(grads)
  assert float(jnp.abs(grads['stem']['conv']['kernel'][...]).sum()) > 0
  assert not np.allclose(new_stats['stem']['bn']['mean'][...], 0.0)


@pytest.mark.parametrize(
  'num_layers,batch_norm,num_params',
  [
    (1, True, 8 * 4 + 4),
    (2, True, 8 * 16 + 2 * 16 + 16 * 4 + 4),
    (3, False, 8 * 16 + 16 + 16 * 16 + 16 + 16 * 4 + 4),
  ],
)
def test_mlp(num_layers, batch_norm, num_params):
  mlp = MLP(
    8, 16, 4, num_layers=num_layers, batch_norm=batch_norm, rngs=_rngs(), dtype=jnp.bfloat16
  )
  assert _num_params(mlp) == num_params
  out = mlp(_images((5, 8)), train=True)
  chex.assert_shape(out, (5, 4))
  chex.assert_type(out, jnp.float32)


def test_mlp_single_layer_is_linear():
  mlp = MLP(8, 16, 4, num_layers=1, batch_norm=True, rngs=_rngs())
  x = _images((5, 8))
  linear = mlp.out.linear
  expected = x @ np.asarray(linear.kernel[...]) + np.asarray(linear.bias[...])
  np.testing.assert_allclose(mlp(x, train=True), expected, rtol=1e-5, atol=1e-5)


def test_mlp_rejects_zero_layers():
  with pytest.raises(ValueError, match='num_layers'):
    MLP(8, 16, 4, num_layers=0, batch_norm=True, rngs=_rngs())


def test_prototypes_match_numpy_cosine():
  protos = Prototypes(6, 10, rngs=_rngs())
  x = (_images((5, 6)) * 3.0).astype(jnp.bfloat16)
  scores = protos(x)
  chex.assert_shape(scores, (5, 10))
  chex.assert_type(scores, jnp.float32)

  w = np.asarray(protos.kernel[...])
  xf = x.astype(np.float32)
  expected = (xf / np.linalg.norm(xf, axis=1, keepdims=True)) @ (
    w / np.linalg.norm(w, axis=1, keepdims=True)
  ).T
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
  assert np.all(np.abs(scores) <= 1.0 + 1e-6)
  # A prototype scored against itself gives cosine 1.
  np.testing.assert_allclose(protos(w[:3] * 5.0).diagonal(), 1.0, rtol=1e-6)


def test_prototypes_with_a_learnt_norm_scale_each_cosine_by_its_magnitude():
  protos = Prototypes(6, 4, rngs=_rngs(), learn_norm=True)
  np.testing.assert_array_equal(protos.magnitude[...], np.ones((4, 1)))  # weight_g.fill_(1)
  magnitude = np.array([[2.0], [0.5], [1.0], [3.0]], np.float32)
  protos.magnitude[...] = magnitude
  x = _images((5, 6))
  w = np.asarray(protos.kernel[...])
  cosine = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (
    w / np.linalg.norm(w, axis=1, keepdims=True)
  ).T
  np.testing.assert_allclose(protos(x), cosine * magnitude.T, rtol=1e-5, atol=1e-6)
  graphdef, params = nnx.split(protos, nnx.Param)
  grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x) ** 2))(params)
  assert np.all(np.abs(grads['magnitude'][...]) > 0)  # The norm learns.


def test_dino_head_layers_and_initialisation():
  """DINOHead's MLP: Linear -> exact GELU, no BatchNorm, biased linears with weights from
  N(0, 0.02^2) and zero biases; its prototypes' directions from U(-1/sqrt(D), 1/sqrt(D))."""
  from scipy.special import erf

  from semi_ssl.models import heads

  mlp = MLP(64, 256, 64, num_layers=3, rngs=_rngs(), **heads.DINO_MLP)
  assert not jax.tree.leaves(nnx.state(mlp, nnx.BatchStat))
  layers = [*mlp.hidden, mlp.out]
  kernels = [np.asarray(layer.linear.kernel[...]) for layer in layers]
  np.testing.assert_allclose([k.std() for k in kernels], 0.02, rtol=0.03)
  assert all(np.all(np.asarray(layer.linear.bias[...]) == 0) for layer in layers)
  for layer in layers:  # Biases that are not 0, to check they are added.
    layer.linear.bias[...] = _images(layer.linear.bias.shape, seed=1)
  x = _images((3, 64))
  gelu = lambda z: 0.5 * z * (1 + erf(z / np.sqrt(2)))  # torch.nn.GELU() (exact).
  expected = x
  for i, layer in enumerate(layers):
    expected = expected @ kernels[i] + np.asarray(layer.linear.bias[...])
    expected = gelu(expected) if i < 2 else expected
  np.testing.assert_allclose(mlp(x, train=True), expected, rtol=1e-4, atol=1e-5)
  w = heads.DINO_PROTOTYPES_INIT(jax.random.key(0), (1000, 256))
  assert np.abs(w).max() <= 1 / 16 and np.abs(w).max() > 0.99 / 16
