"""Speed features: no host transfer inside the train step, batches prefetched to the devices,
rematerialisation, bfloat16 compute with float32 state, profiling on request."""

import ast
import functools
import glob
import importlib.util
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from helpers import REPO, tiny_config
from semi_ssl import config_base, parallel, train
from semi_ssl.data import augment, datasets, pipeline


def jitted_step(config, devices=None):
  """(step, state, batches): the trainer's jitted step of `config`, its fresh state and an
  iterator over its global batches, on `devices` (all by default)."""
  mesh = Mesh(
    np.asarray(devices or jax.devices()).reshape(-1, 1), (parallel.DATA_AXIS, parallel.MODEL_AXIS)
  )
  splits = datasets.load(config)
  method = train.create_method(config, splits, mesh)
  tx, schedule = train.create_optimizer(config, config.num_steps)
  graphdef, state = train.init_state(method, tx, config.seed, parallel.replicated(mesh))
  aug = augment.augment_config_from(config, splits.mean, splits.std, splits.image_shape)
  step = jax.jit(
    functools.partial(
      train.train_step, method=method, graphdef=graphdef, tx=tx, augment_cfg=aug, schedule=schedule
    ),
    donate_argnums=0,
  )
  batches = pipeline.iterate(
    splits,
    mesh,
    start_step=0,
    num_steps=config.num_steps,
    seed=config.seed,
    labelled_batch_size=config.labelled_batch_size,
    batch_size=config.batch_size if method.uses_unlabelled else None,
  )
  return step, state, batches


@pytest.mark.parametrize('method', ['supervised', 'semppl'])
def test_train_steps_make_no_host_transfer(method):
  """Once the state and batches are on the devices, steps (SemPPL: its queue and EMA teacher)
  neither read nor send anything from the host."""
  step, state, batches = jitted_step(tiny_config(method, num_steps=3), jax.devices()[:2])
  batches = list(batches)
  step(jax.tree.map(lambda x: x.copy(), state), batches[0])  # Compiles outside the guard.
  with jax.transfer_guard('disallow'):
    for batch in batches:
      state, metrics = step(state, batch)
  assert int(state.step) == 3 and np.isfinite(float(metrics['loss']))


def run_steps(config):
  """(losses, grad norms, final state) of `config`'s steps on one device."""
  step, state, batches = jitted_step(config, jax.devices()[:1])
  losses, grad_norms = [], []
  for batch in batches:
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
    grad_norms.append(float(metrics['grad_norm']))
  return np.array(losses), np.array(grad_norms), state


def test_remat_recomputes_the_blocks_and_changes_no_loss_or_gradient():
  """With `model.remat` the step's program runs the blocks' convolutions again in the backward
  pass, and its losses, gradients and parameters are those without."""
  convolutions = {}
  for remat in (False, True):
    step, state, batches = jitted_step(tiny_config(model=dict(remat=remat)), jax.devices()[:1])
    program = str(jax.make_jaxpr(step)(state, next(batches)))
    convolutions[remat] = program.count('conv_general_dilated')
  assert convolutions[True] > convolutions[False]
  plain = run_steps(tiny_config(num_steps=2))
  remat = run_steps(tiny_config(num_steps=2, model=dict(remat=True)))
  np.testing.assert_allclose(remat[0], plain[0], rtol=1e-6)
  np.testing.assert_allclose(remat[1], plain[1], rtol=1e-5)
  chex.assert_trees_all_close(
    (remat[2].params, remat[2].model_state),  # BatchNorm statistics updated inside the remat.
    (plain[2].params, plain[2].model_state),
    rtol=1e-5,
    atol=1e-6,
  )


def test_bfloat16_compute_keeps_float32_state_and_a_close_loss():
  """bfloat16 convolutions give the losses of float32 within 1%: bfloat16 keeps 8 significant
  bits (a relative rounding of at most 2**-9, 0.2%, per value), and the cross-entropy of a few
  steps sums a handful of such roundings (measured: 1e-4 here); a float16 overflow or
  bfloat16 parameters drifting over the steps would be far off. The parameters, optimiser
  state and BatchNorm statistics stay float32."""
  losses_32 = run_steps(tiny_config(num_steps=3))[0]
  losses_16, _, state = run_steps(tiny_config(num_steps=3, model=dict(dtype='bfloat16')))
  leaves = jax.tree.leaves((state.params, state.opt_state, state.model_state))
  assert {x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)} == {np.dtype('float32')}
  assert not np.array_equal(losses_16, losses_32)  # The convolutions did compute in bfloat16.
  np.testing.assert_allclose(losses_16, losses_32, rtol=1e-2)


def test_profile_steps_write_a_trace_tensorboard_reads(tmp_path):
  """A 5-step run with profile_steps (3, 4) writes WORKDIR/plugins/profile/<time>/*.xplane.pb,
  the layout of TensorBoard's profile plugin."""
  config = tiny_config(num_steps=5, eval_every=100, checkpoint_every=5, profile_steps=(3, 4))
  train.train_and_evaluate(config, tmp_path)
  traces = list((tmp_path / 'plugins' / 'profile').glob('*/*.xplane.pb'))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


@pytest.mark.parametrize('steps', [(3,), (4, 3), (0, 2), (1.5, 2)])
def test_bad_profile_steps_are_refused(steps):
  with pytest.raises(ValueError, match=r'config.profile_steps=.* must be \(\) or \(START, STOP\)'):
    config_base.validate(tiny_config(profile_steps=steps), num_devices=8, workdir=None)


def test_digits_load_where_tensorflow_and_tfds_are_not_installed(monkeypatch):
  """The data module, loaded anew with TensorFlow and TFDS not importable (the lent GPU
  machine), reads digits; a TFDS data set is refused in one line naming the package."""
  for name in ('tensorflow', 'tensorflow_datasets', 'tensorflow_datasets.core'):
    monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError.
  spec = importlib.util.spec_from_file_location('datasets_without_tfds', datasets.__file__)
  module = importlib.util.module_from_spec(spec)
  monkeypatch.setitem(sys.modules, spec.name, module)  # Its dataclasses look it up there.
  spec.loader.exec_module(module)
  splits = module.load(tiny_config())
  assert len(splits.labelled_labels) == 50 and module.tfds is None
  with pytest.raises(ValueError, match="config.dataset='cifar10' is read with TensorFlow Datasets"):
    module.load(tiny_config(dataset='cifar10'))


def module_scope_imports(path: str) -> set[str]:
  """Top-level module names imported at module scope of `path`, but in a try block that
  catches ImportError (an optional import)."""
  names = set()

  def visit(nodes):
    for node in nodes:
      if isinstance(node, ast.Import):
        names.update(alias.name.split('.')[0] for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names.add(node.module.split('.')[0])
      elif isinstance(node, ast.Try):
        optional = any(
          isinstance(h.type, ast.Name) and h.type.id == 'ImportError' for h in node.handlers
        )
        if not optional:
          visit(node.body)
      elif isinstance(node, ast.If):
        visit(node.body + node.orelse)

  visit(ast.parse(open(path).read()).body)
  return names


def test_no_module_of_the_package_or_benchmarks_needs_tensorflow_to_import():
  """TensorFlow, TFDS and clu are not on the GPU machine: no module imports them at module
  scope, but as an optional import."""
  paths = glob.glob(f'{REPO}/semi_ssl/**/*.py', recursive=True)
  paths += glob.glob(f'{REPO}/benchmarks/*.py')
  assert len(paths) > 40
  for path in paths:
    heavy = module_scope_imports(path) & {'tensorflow', 'tensorflow_datasets', 'clu'}
    assert not heavy, f'{path} imports {heavy}'
