"""SimCLRv2: NT-Xent against the paper's formula and across devices, the distillation loss, the
frozen teacher, the three stages and what each takes from the one before."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import saved_state, tiny_config
from semi_ssl import checkpoint, config_base, main, parallel, train
from semi_ssl.methods import base
from semi_ssl.methods.simclrv2 import SimCLRv2
from semi_ssl.ops import losses
import test_references

DIGITS = base.DataInfo(num_classes=10, image_shape=(8, 8, 1))


def nt_xent_reference(z1, z2, temperature, memory=()):
  """Chen et al. 2020, Algorithm 1, written out: views 2k and 2k+1 are image k's, s the cosine,
  l(i, j) = -log(exp(s_ij / t) / (sum_{k != i} exp(s_ik / t) + sum_m exp(s(i, m) / t))) with m
  the nonzero rows of `memory`, L = mean over k of l(2k, 2k+1) + l(2k+1, 2k), halved."""
  z = np.stack([z1, z2], axis=1).reshape(-1, z1.shape[1]).astype(np.float64)
  n = z.shape[0]
  cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)
  s = lambda i, j: cos(z[i], z[j])
  negatives = lambda i: sum(np.exp(cos(z[i], m) / temperature) for m in memory if np.any(m))
  l = lambda i, j: (
    -np.log(
      np.exp(s(i, j) / temperature)
      / (sum(np.exp(s(i, k) / temperature) for k in range(n) if k != i) + negatives(i))
    )
  )
  return sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(n // 2)) / n


def test_nt_xent_equals_the_papers_formula():
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(2, 6, 5)).astype(np.float32)
  for temperature in (0.1, 0.5, 1.0):
    np.testing.assert_allclose(
      losses.nt_xent(z1, z2, temperature), nt_xent_reference(z1, z2, temperature), rtol=1e-5
    )


def test_nt_xent_with_a_memory_equals_the_formula():
  """The memory's filled rows are more negatives of every anchor; its empty (zero) rows count
  for nothing: a memory of zeros leaves the loss unchanged."""
  rng = np.random.default_rng(3)
  z1, z2 = rng.normal(size=(2, 3, 4)).astype(np.float32)
  memory = rng.normal(size=(5, 4)).astype(np.float32)
  memory[2] = 0.0
  for temperature in (0.1, 0.5):
    expected = nt_xent_reference(z1, z2, temperature, memory)
    np.testing.assert_allclose(losses.nt_xent(z1, z2, temperature, memory), expected, rtol=1e-5)
    assert abs(expected - nt_xent_reference(z1, z2, temperature)) > 0.1
  np.testing.assert_allclose(
    losses.nt_xent(z1, z2, 0.5, np.zeros_like(memory)), losses.nt_xent(z1, z2, 0.5), rtol=1e-6
  )


def test_nt_xent_by_hand():
  """Two images, views e1, e1 and e2, e2 at t = 1: each anchor has its positive at cosine 1 and
  two negatives at 0, so l = -log(e / (e + 2)); one image alone has no negative, l = 0."""
  eye = np.eye(2, dtype=np.float32)
  np.testing.assert_allclose(losses.nt_xent(eye, 3 * eye, 1.0), np.log(1 + 2 / np.e), rtol=1e-6)
  np.testing.assert_allclose(losses.nt_xent(eye[:1], -eye[:1], 0.1), 0.0, atol=1e-6)


def test_nt_xent_negatives_span_every_device():
  """On 8 devices, each holding 2 of the 16 images, the jitted loss and its gradients equal one
  device's: the negatives are the whole global batch, not a device's rows (whose mean loss
  differs)."""
  assert len(jax.devices()) == 8
  rng = np.random.default_rng(1)
  z1, z2 = rng.normal(size=(2, 16, 4)).astype(np.float32)
  value_and_grad = jax.jit(jax.value_and_grad(lambda a, b: losses.nt_xent(a, b, 0.2), (0, 1)))
  single = value_and_grad(z1, z2)
  split = parallel.batch_sharding(parallel.create_mesh())
  sharded = value_and_grad(jax.device_put(z1, split), jax.device_put(z2, split))
  assert len(sharded[1][0].sharding.device_set) == 8
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), sharded, single)
  per_device = np.mean([losses.nt_xent(z1[i : i + 2], z2[i : i + 2], 0.2) for i in range(0, 16, 2)])
  assert abs(per_device - float(single[0])) > 0.1


def test_distillation_gradient_is_zero_only_for_equal_logits():
  """d/ds CE(softmax(t / T), softmax(s / T)) is zero when s = t (or t + a constant per row),
  nonzero otherwise; the teacher's logits get no gradient."""
  rng = np.random.default_rng(2)
  teacher = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  grads = jax.grad(lambda s, t: jnp.sum(losses.distillation_loss(s, t, 2.0)), (0, 1))
  for student in (teacher, teacher + jnp.arange(4.0)[:, None]):
    student_grad, teacher_grad = grads(student, teacher)
    np.testing.assert_allclose(student_grad, 0.0, atol=1e-6)
    np.testing.assert_array_equal(teacher_grad, 0.0)
  assert np.abs(grads(teacher.at[0, 0].add(1.0), teacher)[0]).max() > 1e-2
  # At T = 1 it is the cross-entropy to the teacher's softmax.
  np.testing.assert_allclose(
    losses.distillation_loss(2 * teacher, teacher, 1.0),
    losses.cross_entropy(2 * teacher, jax.nn.softmax(teacher)),
    rtol=1e-6,
  )


def test_finetune_takes_the_backbone_and_the_first_projection_layer_only():
  """init_from's paths ('backbone', 'projector') on the fine-tune model copy every parameter and
  BatchNorm statistic of the backbone and of the head's first layer from pretrain, and nothing
  else: the head's later layers have no place in it, and the classifier stays as initialised,
  at zero (the official fine-tune's --zero_init_logits_layer=True)."""
  pretrain = SimCLRv2(tiny_config('simclrv2'), DIGITS, parallel.create_mesh())
  finetune = SimCLRv2(
    tiny_config('simclrv2', simclrv2=dict(stage='finetune')), DIGITS, parallel.create_mesh()
  )
  flat = lambda state: checkpoint._flatten(nnx.to_pure_dict(state))
  source_params, source_stats = nnx.split(pretrain.create_model(nnx.Rngs(1)), nnx.Param, ...)[1:]
  params, stats = nnx.split(finetune.create_model(nnx.Rngs(2)), nnx.Param, ...)[1:]
  fresh = flat(params)
  source = {'params': flat(source_params), 'model_state': flat(source_stats)}
  copied = flat(checkpoint.copy_subtrees(params, source['params'], ('backbone', 'projector')))
  copied_stats = checkpoint.copy_subtrees(
    stats, source['model_state'], ('backbone', 'projector'), each_prefix_matches=False
  )
  taken = {path for path in copied if not path.startswith('classifier/')} | set(flat(copied_stats))
  first_layer = lambda path: path.startswith(('backbone/', 'projector/layers/0/'))
  assert taken == {p for p in [*source['params'], *source['model_state']] if first_layer(p)}
  assert any(p.startswith('projector/layers/2/') for p in source['params'])
  assert any('/bn/' in p for p in flat(copied_stats))
  for path, value in copied.items():
    expected = fresh[path] if path.startswith('classifier/') else source['params'][path]
    np.testing.assert_array_equal(value, expected, err_msg=path)
  for path, value in flat(copied_stats).items():
    np.testing.assert_array_equal(value, source['model_state'][path], err_msg=path)
  assert sorted({p.split('/')[0] for p in copied}) == ['backbone', 'classifier', 'projector']
  assert all(not np.any(v) for p, v in copied.items() if p.startswith('classifier/'))


def test_memory_is_read_then_filled_fifo_by_the_momentum_encoder(monkeypatch):
  """Pretraining with a memory of 12 keys, 8 written a step (2 views of 2 + 2 images): step t's
  loss is NT-Xent with the memory that steps < t left as negatives; then its keys (the momentum
  encoder's unit projections of both views, here equal to the online ones: no update between
  the steps) overwrite the oldest entries, wrapping around. update_state moves the momentum
  encoder towards the new parameters by memory_momentum."""
  monkeypatch.setattr(
    base,
    'create_backbone',
    lambda config, data, rngs: test_references.PixelBackbone(data.image_shape[-1], rngs=rngs),
  )
  config = tiny_config(
    'simclrv2',
    batch_size=2,
    labelled_batch_size=2,
    simclrv2=dict(memory_size=12, memory_momentum=0.75),
  )
  method = SimCLRv2(config, DIGITS, parallel.create_mesh())
  model = method.create_model(nnx.Rngs(0))
  state = method.init_state(nnx.state(model, nnx.Param))
  rng = np.random.default_rng(4)
  memories, keys = [], []
  for step in range(3):
    labelled, unlabelled = rng.normal(size=(2, 2, 2, 8, 8, 1)).astype(np.float32)
    batch = {'labelled': {'views': list(labelled)}, 'unlabelled': {'views': list(unlabelled)}}
    z1, z2 = method._project(model, [np.concatenate(v) for v in zip(labelled, unlabelled)])
    before = np.asarray(state['memory']['embeddings'])
    loss, (state, metrics) = method.loss(model, state, batch, None, step)
    np.testing.assert_allclose(loss, nt_xent_reference(z1, z2, 0.2, before), rtol=1e-5)
    memories.append(np.asarray(state['memory']['embeddings']))
    keys.append(
      np.concatenate([z1, z2]) / np.linalg.norm(np.concatenate([z1, z2]), axis=1)[:, None]
    )
  assert float(metrics['memory_fill']) == 1.0
  allclose = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  allclose(memories[0], np.concatenate([keys[0], np.zeros((4, keys[0].shape[1]))]))
  allclose(memories[1], np.concatenate([keys[1][4:], keys[0][4:], keys[1][:4]]))
  allclose(memories[2], np.concatenate([keys[1][4:], keys[2]]))
  params = jax.tree.map(lambda p: p + 1.0, nnx.state(model, nnx.Param))
  moved = method.update_state(params, state, 0)['momentum_encoder']
  expected = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * p, state['momentum_encoder'], params)
  jax.tree.map(allclose, moved, expected)


def tiny_plan(workdir):
  """A three-stage SimCLRv2 plan of 2 steps a stage on the tiny config (teacher = its model)."""
  c = tiny_config('simclrv2', num_steps=2, eval_every=2, checkpoint_every=2)
  c.simclrv2.teacher.model = c.model
  config_base.simclrv2_stages(c, finetune={}, distill={})
  return main.stage_plan(c, str(workdir))


def test_three_stages_run_and_resume_at_each_stage(tmp_path, monkeypatch):
  """pretrain reports the kNN probe and no test_top1; a plan stopped after pretrain, then
  after finetune, goes on from the next stage (finished stages are skipped, not rerun); the
  distill stage's frozen teacher is the fine-tuned network, unchanged by its steps."""
  monkeypatch.setattr(
    base,
    'create_backbone',
    lambda config, data, rngs: test_references.PixelBackbone(data.image_shape[-1], rngs=rngs),
  )
  plan = tiny_plan(tmp_path)
  assert plan[2][0].simclrv2.teacher.workdir == str(tmp_path / 'finetune')
  main.validate_plan(plan, str(tmp_path), num_devices=len(jax.devices()))
  (pretrain,) = main.run_plan(plan[:1])
  assert 'knn_top1' in pretrain and 'test_top1' not in pretrain
  main.run_plan(plan[:2])
  mtime = (tmp_path / 'pretrain' / train.RESULTS_FILE).stat().st_mtime_ns
  rows = main.run_plan(plan)
  assert (tmp_path / 'pretrain' / train.RESULTS_FILE).stat().st_mtime_ns == mtime
  assert [r['stage'] for r in rows] == ['pretrain', 'finetune', 'distill']
  assert all('test_top1' in r for r in rows[1:])
  finetuned = saved_state(plan[1][1], 2)
  teacher = saved_state(plan[2][1], 2)['method_state']['teacher']
  chex.assert_trees_all_equal(teacher['params'], finetuned['params'])
  chex.assert_trees_all_equal(teacher['model_state'], finetuned['model_state'])


def test_bad_simclrv2_settings_stop_with_one_line():
  mesh = parallel.create_mesh()
  for overrides, message in (
    (dict(simclrv2=dict(stage='linear')), "stage='linear' is unknown"),
    (dict(simclrv2=dict(stage='distill')), 'set exactly one of workdir'),
    (dict(augment=dict(num_local_crops=1)), 'num_local_crops=0'),
    (dict(simclrv2=dict(finetune_layers=4)), 'finetune_layers=4 must be in'),
    (dict(simclrv2=dict(memory_size=63)), 'below the 64 keys written per step'),
    (dict(simclrv2=dict(stage='finetune', memory_size=64)), "for stage 'pretrain' only"),
  ):
    with pytest.raises(ValueError, match=message):
      SimCLRv2(tiny_config('simclrv2', **overrides), DIGITS, mesh)
