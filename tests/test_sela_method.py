"""SeLa's method (methods/sela.py): its relabelling (the dataset pass's absorb) solves each head's
transport problem, head 0's with the labelled images counted at their classes, the same on 8
devices as on 1; the labels survive a resume; bad settings stop naming the key."""

import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import test_references
from helpers import saved_state, tiny_config
from semi_ssl import checkpoint, parallel, train
from semi_ssl.methods import base, sela
from semi_ssl.ops.sinkhorn import self_labels
from flax import nnx

N, HEADS, CLUSTERS = 1200, 2, 12
# Unbalanced labelled classes (digits' 10 of head 0's 12 clusters): 60 + 30 + 10 images.
LABELLED = (60, 30, 10, 0, 0, 0, 0, 0, 0, 0)


def _method(mesh, semi_supervised=True, **data):
  config = tiny_config('sela', sela=dict(semi_supervised=semi_supervised))
  info = dict(num_classes=10, image_shape=(8, 8, 1), num_unlabelled=N, labelled_counts=LABELLED)
  return sela.SeLa(config, base.DataInfo(**{**info, **data}), mesh)


def _features_and_probs(method):
  """A model, pass features [N, D] and its heads' softmax [N, H, K] as the pass once stored it."""
  model = method.create_model(nnx.Rngs(0))
  features = jax.random.normal(jax.random.key(0), (N, model.backbone.feature_dim))
  return model, features, jax.nn.softmax(model.logits(features), axis=-1)


def _absorb(method, model, features):
  state = jax.jit(lambda: method.init_state(None))()
  absorb = nnx.jit(method.absorb_dataset_pass)
  return absorb(model, state, {'features': features}, jnp.int32(0))


def test_pass_stores_features_not_every_heads_softmax():
  method = _method(test_references.one_device_mesh())
  model, _, _ = _features_and_probs(method)
  outputs = method.dataset_pass_outputs(model, None, jnp.zeros((4, 8, 8, 1)))
  assert jax.tree.map(jnp.shape, outputs) == {'features': (4, model.backbone.feature_dim)}


@pytest.mark.parametrize('semi_supervised', [True, False])
def test_relabel_solves_each_head_with_the_labelled_counts_in_head_zero(semi_supervised):
  method = _method(test_references.one_device_mesh(), semi_supervised)
  model, features, probs = _features_and_probs(method)
  state = _absorb(method, model, features)
  chex.assert_shape(state['labels'], (N, HEADS))
  counts = jnp.pad(jnp.asarray(LABELLED, jnp.float32), (0, CLUSTERS - len(LABELLED)))
  kwargs = dict(lam=method.hp.lam, tol=method.hp.tol, max_iters=method.hp.max_iters)
  head_0 = self_labels(probs[:, 0], fixed_counts=counts if semi_supervised else None, **kwargs)
  np.testing.assert_array_equal(state['labels'][:, 0], head_0.labels)
  np.testing.assert_array_equal(state['labels'][:, 1], self_labels(probs[:, 1], **kwargs).labels)
  np.testing.assert_array_equal(state['relabel_iters'][0], head_0.num_iters)
  # Head 0's clusters: near-equal shares of the labelled (semi-supervised) and unlabelled images.
  sizes = np.bincount(state['labels'][:, 0], minlength=CLUSTERS)
  total = sizes + (np.asarray(counts) if semi_supervised else 0)
  share = total.sum() / CLUSTERS
  assert np.max(np.abs(total / share - 1)) < 0.15  # hard labels: the entropic plan's argmax
  # Counted or not, the labelled images move class 0's share by a third of it.
  assert (sizes[0] < 0.75 * share) == semi_supervised


def test_relabel_on_8_devices_equals_one():
  """The pass's outputs arrive split over the data axis: the transport sums are global."""
  mesh = parallel.create_mesh()
  assert mesh.shape[parallel.DATA_AXIS] == 8
  model, features, _ = _features_and_probs(_method(mesh))
  split = jax.device_put(features, NamedSharding(mesh, P(parallel.DATA_AXIS)))
  on_8 = jax.device_get(_absorb(_method(mesh), model, split))
  on_1 = jax.device_get(_absorb(_method(test_references.one_device_mesh()), model, features))
  np.testing.assert_array_equal(on_8['labels'], on_1['labels'])
  np.testing.assert_array_equal(on_8['relabel_iters'], on_1['relabel_iters'])


def test_initial_labels_spread_equally():
  """[O] main.py:150-155: i % K of image i, permuted per head."""
  labels = jax.device_get(
    jax.jit(lambda: _method(test_references.one_device_mesh()).init_state(None))()['labels']
  )
  for head in range(HEADS):
    np.testing.assert_array_equal(np.bincount(labels[:, head]), [N // CLUSTERS] * CLUSTERS)
  assert not np.array_equal(labels[:, 0], labels[:, 1])


def test_labels_survive_a_resume(tmp_path, monkeypatch):
  """Relabelled before steps 0 and 1 of 4; checkpoints at 2 and 4. The labels saved at 2 are the
  pass's (not the initial ones), they stay to the end, and a run resumed from 2 ends in the
  state of the run straight through (no pass redone, no labels lost)."""
  monkeypatch.setattr(
    train.base,
    'create_backbone',
    lambda config, data, rngs: test_references.PixelBackbone(data.image_shape[-1], rngs=rngs),
  )
  config = tiny_config('sela', eval_every=100, sela=dict(num_label_updates=3, relabel_power=2))
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  after_passes, final = saved_state(workdir, 2)['method_state'], saved_state(workdir, 4)
  method = train.create_method(config, train.datasets.load(config), parallel.create_mesh())
  assert method.dataset_pass_steps() == (0, 1)
  initial = jax.device_get(jax.jit(lambda: method.init_state(None))()['labels'])
  assert not np.array_equal(after_passes['labels'], initial)
  assert np.all(after_passes['relabel_iters'] > 0)
  chex.assert_trees_all_equal(final['method_state'], after_passes)
  shutil.rmtree(os.path.join(workdir, checkpoint.CHECKPOINT_DIR, '4'))
  os.remove(os.path.join(workdir, train.RESULTS_FILE))
  train.train_and_evaluate(config, workdir)
  chex.assert_trees_all_equal(saved_state(workdir, 4), final)


@pytest.mark.parametrize(
  'overrides, match',
  [
    (dict(num_clusters=8), 'num_clusters=8: the semi-supervised form needs the 10 classes'),
    (dict(num_heads=0), 'num_heads=0 must be an integer >= 1'),
    (dict(lam=0.0), 'lam=0.0 must be > 0'),
    (dict(num_label_updates=0), 'num_label_updates must be >= 1'),
  ],
)
def test_bad_sela_settings_stop_naming_the_key(overrides, match):
  config = tiny_config('sela', sela=overrides)
  with pytest.raises(ValueError, match=match):
    sela.SeLa(config, base.DataInfo(10, (8, 8, 1)), test_references.one_device_mesh())


def test_semi_supervised_relabel_needs_the_labelled_counts():
  method = _method(test_references.one_device_mesh(), labelled_counts=())
  with pytest.raises(ValueError, match='labelled_counts has 0 classes, not 10'):
    _absorb(method, *_features_and_probs(method)[:2])
