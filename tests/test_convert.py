"""semi_ssl.convert on the torch fixtures of tests/fixtures/make_torch_resnet.py: a tiny SwAV
ResNet-50 (width 1/32) with its projection head and prototypes, in both torch formats."""

import os
import pickle

import jax
import numpy as np
import pytest
from flax import nnx

from helpers import REPO
from semi_ssl import checkpoint, config_base, convert, parallel, train
from semi_ssl.errors import UserError
from semi_ssl.methods import base
from semi_ssl.methods.suave import Suave
from semi_ssl.models import resnet
from semi_ssl.models.prototypes import PrototypeModel

FIXTURES = os.path.join(REPO, 'tests', 'fixtures')
WIDTH = 2 / 64  # The fixture's 2 base channels.
HEAD = dict(hidden_dim=16, embed_dim=8, num_layers=2, num_prototypes=12)


@pytest.fixture(scope='module')
def torch_outputs():
  return dict(np.load(os.path.join(FIXTURES, 'swav_tiny_outputs.npz')))


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """The zip fixture converted: its workdir."""
  out = tmp_path_factory.mktemp('converted')
  convert.convert_file(os.path.join(FIXTURES, 'swav_tiny_zip.pth'), str(out))
  return str(out)


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_converted_network_computes_what_torch_computed(fmt, tmp_path, torch_outputs):
  out = str(tmp_path / 'out')
  record = convert.convert_file(os.path.join(FIXTURES, f'swav_tiny_{fmt}.pth'), out)
  assert record['width'] == WIDTH and record['parts'] == ['backbone', 'projector', 'prototypes']
  source = checkpoint.load_variables(out)  # The path init_from reads.
  rngs = nnx.Rngs(0)
  backbone = resnet.create_backbone(
    'resnet50', width=WIDTH, stem='imagenet', num_channels=3, rngs=rngs
  )
  model = PrototypeModel(backbone, rngs=rngs, **HEAD)
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  parts = ('backbone', 'projector', 'prototypes')
  params = checkpoint.copy_subtrees(params, source['params'], parts)
  model_state = checkpoint.copy_subtrees(
    model_state, source['model_state'], parts, each_prefix_matches=False
  )
  model = nnx.merge(graphdef, params, model_state)
  images = torch_outputs['images']
  features = model.backbone(images, train=False)
  embeddings = model.embed_features(features, train=False)
  np.testing.assert_allclose(features, torch_outputs['features'], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(embeddings, torch_outputs['embeddings'], atol=1e-4)
  np.testing.assert_allclose(model.prototypes(embeddings), torch_outputs['scores'], atol=1e-4)


def test_init_from_loads_it_into_the_suave_imagenet_model(converted):
  config = config_base.load_config_file(os.path.join(REPO, 'configs/suave/imagenet_10pct.py'))
  config.model.width = WIDTH
  config.model.dtype = 'float32'
  config.suave.projector_hidden_dim = HEAD['hidden_dim']
  config.suave.embed_dim = HEAD['embed_dim']
  config = config_base.resolve(config, dict(unlabelled=1000, labelled=100))
  data = base.DataInfo(num_classes=1000, image_shape=(32, 32, 3))
  method = Suave(config, data, parallel.create_mesh())
  tx, _ = train.create_optimizer(config, config.num_steps)
  _, init = train.state_initializer(method, tx, seed=0)
  sharding = train.state_sharding(method, jax.eval_shape(init))
  state = jax.jit(init, out_shardings=sharding)()
  source = checkpoint.load_variables(converted)
  loaded = train.initialise_from(state, source, ('backbone', 'projector'), method, sharding)
  flat = checkpoint._flatten(jax.device_get(loaded.params))
  stats = checkpoint._flatten(jax.device_get(loaded.model_state))
  for path in flat.keys() - {'prototypes/kernel'}:
    np.testing.assert_array_equal(flat[path], source['params'][path], err_msg=path)
  for path in stats:
    np.testing.assert_array_equal(stats[path], source['model_state'][path], err_msg=path)
  assert flat['prototypes/kernel'].shape == (1000, HEAD['embed_dim'])  # Fresh: 1000 classes.


def test_a_pickle_with_another_global_is_refused_unrun(tmp_path):
  class Exploit:
    def __reduce__(self):
      return os.system, (f'touch {tmp_path}/ran',)

  path = tmp_path / 'evil.pth'
  path.write_bytes(pickle.dumps({'conv1.weight': Exploit()}))
  with pytest.raises(UserError, match=r'asks for posix\.system.*refused without running it'):
    convert.read_torch_file(str(path))
  assert not (tmp_path / 'ran').exists()


def test_a_missing_file_is_named(tmp_path):
  with pytest.raises(UserError, match='is not a file'):
    convert.read_torch_file(str(tmp_path / 'missing.pth'))


def _fixture_state():
  path = os.path.join(FIXTURES, 'swav_tiny_zip.pth')
  return convert.unwrap(convert.read_torch_file(path), path)


def test_a_wrong_shape_or_unknown_key_is_named():
  state = _fixture_state()
  assert all(not k.startswith('module.') for k in state)  # SwAV's DDP prefix removed.
  wrong = dict(state)
  wrong['layer3.2.conv2.weight'] = np.zeros((8, 8, 1, 1), np.float32)
  with pytest.raises(UserError, match=r"^'layer3\.2\.conv2\.weight' \(1, 1, 8, 8\) does not fit"):
    convert.check_shapes(*convert.convert(wrong))
  extra = dict(state, **{'layer5.0.conv1.weight': state['layer4.0.conv1.weight']})
  with pytest.raises(UserError, match=r"^'layer5\.0\.conv1\.weight' is not part of"):
    convert.convert(extra)
  missing = {k: v for k, v in state.items() if not k.startswith('layer4.2.')}
  with pytest.raises(UserError, match=r"lacks the array of 'backbone/blocks/15/"):
    convert.check_shapes(*convert.convert(missing))


def test_torchvision_fc_becomes_the_classifier_head():
  state = {k: v for k, v in _fixture_state().items() if not k.startswith(('proj', 'proto'))}
  fc = np.arange(64 * 5, dtype=np.float32).reshape(5, 64)
  variables, source = convert.convert({**state, 'fc.weight': fc, 'fc.bias': np.ones(5)})
  convert.check_shapes(variables, source)
  np.testing.assert_array_equal(variables['params']['head/kernel'], fc.T)
  assert {p.split('/')[0] for p in variables['params']} == {'backbone', 'head'}
