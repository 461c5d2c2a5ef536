"""torchvision-layout ResNet-50 state dicts (SwAV, DINO, torchvision) -> an `init_from` workdir.

    python -m semi_ssl.convert --torch FILE.pth --out DIR

then `--config.init_from.workdir=DIR --config.init_from.paths="('backbone',)"` (with
`--config.model.width` the width it prints: 1 for a standard ResNet-50).

Reading: both formats of `torch.save`, the zip one (torch >= 1.6: <name>/data.pkl and the raw
storages <name>/data/<key>) and the legacy one (pickled magic number, protocol and system
information, the pickled object, its storage keys, then each storage as an int64 element count
and its bytes: SwAV's 2020 checkpoints), without torch and without running pickled code: the
unpickler builds only an OrderedDict, tensors (numpy arrays from storage bytes, offset, shape,
stride), storages of the numeric types and argparse.Namespace (DINO's `args`); any other global
stops it, named. Wrappers: {'state_dict': ...}, {'model': ...}, {'teacher': ...} (DINO's full
checkpoints, whose teacher is evaluated), and the prefixes `module.` (DDP) and `backbone.`.

What is mapped (torch name -> this code's path; paths under `params` unless marked):
  conv1, bn1                    -> backbone/stem/conv, backbone/stem/bn
  layer{s}.{j}.conv{k}, .bn{k}  -> backbone/blocks/{b}/conv{k}/conv, .../conv{k}/bn (b counts
                                   the blocks of all stages)
  layer{s}.{j}.downsample.0, .1 -> backbone/blocks/{b}/shortcut/conv, .../shortcut/bn
  conv .weight [O, I, kh, kw]   -> .../kernel [kh, kw, I, O]
  BatchNorm .weight, .bias      -> .../scale, .../bias; .running_mean, .running_var ->
                                   model_state .../mean, .../var; num_batches_tracked dropped
  projection_head.{i} (SwAV), head.mlp.{i} (DINO): Linear layers and the BatchNorm after each
                                -> projector/hidden/{n}/linear (and /bn), the last Linear
                                   projector/out/linear; Linear .weight [O, I] -> kernel [I, O].
                                   A Linear followed by BatchNorm has no bias here: its bias is
                                   folded into the BatchNorm's running mean (mean - bias), the
                                   same function in eval and train mode.
  prototypes.weight (SwAV), head.last_layer.weight_v (DINO) -> prototypes/kernel [K, D];
  head.last_layer.weight_g      -> prototypes/magnitude [K, 1]
  fc (torchvision)              -> head (the supervised baseline's classifier)

Every array is checked against this code's model built at the checkpoint's width (base
channels / 64) and head sizes; the first torch key that maps nowhere or has another shape stops
the conversion, named. The output is a workdir whose one checkpoint (step 0) holds
{'params', 'model_state'} in float32, as `checkpoint.load_variables` reads it.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import os
import pickle
import re
import zipfile
from typing import Any

import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx

from semi_ssl import checkpoint, config_base
from semi_ssl.errors import UserError, exit_on_user_error
from semi_ssl.models import resnet
from semi_ssl.models.prototypes import PrototypeModel

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
  'DoubleStorage': np.float64,
  'FloatStorage': np.float32,
  'HalfStorage': np.float16,
  'BFloat16Storage': jnp.bfloat16,
  'LongStorage': np.int64,
  'IntStorage': np.int32,
  'ShortStorage': np.int16,
  'CharStorage': np.int8,
  'ByteStorage': np.uint8,
  'BoolStorage': np.bool_,
}
WRAPPERS = ('state_dict', 'model', 'teacher')
PREFIXES = ('module.', 'backbone.')


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
  key: str
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """A tensor whose storage may not be read yet (the legacy format stores it after the
  object)."""

  storage: _Storage
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]

  def materialise(self, storages: dict[str, bytes]) -> np.ndarray:
    data = np.frombuffer(storages[self.storage.key], self.storage.dtype)
    itemsize = data.dtype.itemsize
    return np.array(
      np.ndarray(
        self.shape,
        data.dtype,
        buffer=data,
        offset=self.offset * itemsize,
        strides=[s * itemsize for s in self.stride],
      )
    )


def _rebuild_tensor(storage, offset, shape, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata.
  return _Tensor(storage, offset, tuple(shape), tuple(stride))


def _rebuild_parameter(data, *unused):
  del unused
  return data


_ALLOWED = {
  ('collections', 'OrderedDict'): collections.OrderedDict,
  ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
  ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
  ('argparse', 'Namespace'): argparse.Namespace,
  **{('torch', name): _StorageType(np.dtype(dtype)) for name, dtype in STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
  """Builds the few objects a state dict holds (`_ALLOWED`); any other global is refused."""

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED:
      raise UserError(
        f'{self.path}: the pickle asks for {module}.{name}, which a state dict does not need: '
        'refused without running it. Convert a checkpoint that holds tensors only.'
      )
    return _ALLOWED[module, name]

  def persistent_load(self, pid):
    kind, storage_type, key = pid[:3]  # ('storage', type, key, location, numel[, view]).
    if kind != 'storage' or not isinstance(storage_type, _StorageType):
      raise UserError(f'{self.path}: unknown persistent id {pid!r} in the pickle.')
    return _Storage(str(key), storage_type.dtype)


def _unpickle(file: io.BufferedIOBase, path: str) -> Any:
  unpickler = _Unpickler(file)
  unpickler.path = path
  return unpickler.load()


def _materialise(obj: Any, storages: dict[str, bytes]) -> Any:
  """`obj` with every `_Tensor` in its dicts, lists and tuples read into a numpy array."""
  if isinstance(obj, _Tensor):
    return obj.materialise(storages)
  if isinstance(obj, dict):
    return {k: _materialise(v, storages) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v, storages) for v in obj)
  return obj


def read_torch_file(path: str) -> Any:
  """What `torch.load(path)` returns, tensors as numpy arrays; zip or legacy format."""
  if not os.path.isfile(path):
    raise UserError(f'{path} is not a file: give --torch the path of a .pth state dict.')
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      pickles = [n for n in archive.namelist() if n.endswith('data.pkl')]
      if not pickles:
        raise UserError(f'{path} is a zip file without data.pkl: not a torch checkpoint.')
      root = pickles[0][: -len('data.pkl')]
      obj = _unpickle(io.BytesIO(archive.read(pickles[0])), path)
      storages = {
        name[len(root) + len('data/') :]: archive.read(name)
        for name in archive.namelist()
        if name.startswith(root + 'data/')
      }
    return _materialise(obj, storages)
  with open(path, 'rb') as file:
    try:
      magic = _unpickle(file, path)
    except UserError:
      raise
    except Exception as error:  # pylint: disable=broad-except
      raise UserError(f'{path} is not a torch checkpoint ({error}).') from error
    if magic != LEGACY_MAGIC_NUMBER:
      raise UserError(f'{path} is neither a zip nor a legacy torch checkpoint.')
    _unpickle(file, path)  # Protocol version.
    _unpickle(file, path)  # System information.
    obj = _unpickle(file, path)
    storages, dtypes = {}, _storage_dtypes(obj)
    for key in _unpickle(file, path):
      numel = int(np.frombuffer(file.read(8), '<i8')[0])
      storages[str(key)] = file.read(numel * dtypes[str(key)].itemsize)
  return _materialise(obj, storages)


def _storage_dtypes(obj: Any) -> dict[str, np.dtype]:
  """{storage key: dtype} of the tensors in `obj`."""
  if isinstance(obj, _Tensor):
    return {obj.storage.key: obj.storage.dtype}
  values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
  return {k: v for value in values for k, v in _storage_dtypes(value).items()}


def unwrap(obj: Any, path: str) -> dict[str, np.ndarray]:
  """The state dict in `obj` (a `WRAPPERS` entry's, if any), `PREFIXES` removed."""
  while isinstance(obj, dict):
    inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
    if inner is None:
      break
    obj = inner
  if not isinstance(obj, dict) or not obj:
    raise UserError(f'{path} holds no state dict: expected a dict of tensors.')
  state = {}
  for key, value in obj.items():
    for prefix in PREFIXES:
      key = key.removeprefix(prefix)
    if not isinstance(value, np.ndarray):
      raise UserError(f"{path}: '{key}' is a {type(value).__name__}, not a tensor.")
    state[key] = value
  return state


_BN = {'weight': 'scale', 'bias': 'bias', 'running_mean': 'mean', 'running_var': 'var'}
_STATS = ('mean', 'var')


def _backbone_path(key: str, stage_sizes: tuple[int, ...]) -> tuple[str, str] | None:
  """(module path, torch attribute) of a backbone key, or None when it is not one."""
  if match := re.fullmatch(r'(conv1|bn1)\.(\w+)', key):
    return f'backbone/stem/{"conv" if match[1] == "conv1" else "bn"}', match[2]
  match = re.fullmatch(r'layer(\d)\.(\d+)\.(conv|bn|downsample\.)(\d)\.(\w+)', key)
  if not match or not 1 <= int(match[1]) <= len(stage_sizes):
    return None
  block = sum(stage_sizes[: int(match[1]) - 1]) + int(match[2])
  if match[3] == 'downsample.':
    return f'backbone/blocks/{block}/shortcut/{("conv", "bn")[int(match[4])]}', match[5]
  return f'backbone/blocks/{block}/conv{match[4]}/{match[3]}', match[5]


def _head_layers(state: dict[str, np.ndarray], prefix: str) -> list[dict[str, str]]:
  """[{'linear': module, 'bn': module or absent}] of a torch nn.Sequential (or one nn.Linear)
  at `prefix`, in order; activations have no parameters."""
  if f'{prefix}.weight' in state:
    return [{'linear': prefix}]
  indices = sorted({int(k.split('.')[-2]) for k in state if k.startswith(prefix + '.')})
  layers = []
  for i in indices:
    module = f'{prefix}.{i}'
    if f'{module}.running_mean' in state:
      if not layers or 'bn' in layers[-1]:
        raise UserError(f"'{module}.running_mean': a BatchNorm that follows no Linear layer.")
      layers[-1]['bn'] = module
    else:
      layers.append({'linear': module})
  return layers


def convert(state: dict[str, np.ndarray]) -> tuple[dict, dict[str, str]]:
  """(variables {'params': {path: array}, 'model_state': {path: array}} float32, {path: the torch
  key it came from}); raises UserError naming the first key that does not fit (see the module
  docstring)."""
  stage_sizes = resnet.BACKBONES['resnet50']['stage_sizes']
  variables, source = {'params': {}, 'model_state': {}}, {}

  def put(path, array, key):
    collection = 'model_state' if path.rsplit('/', 1)[-1] in _STATS else 'params'
    variables[collection][path] = np.asarray(array, np.float32)
    source[path] = key

  def put_linear(path, module, bias_into=None):
    put(f'{path}/kernel', state[f'{module}.weight'].T, f'{module}.weight')
    if f'{module}.bias' in state and bias_into is None:
      put(f'{path}/bias', state[f'{module}.bias'], f'{module}.bias')
    return state.get(f'{module}.bias')

  def put_bn(path, module, folded_bias):
    for name, ours in _BN.items():
      array = state[f'{module}.{name}']
      if name == 'running_mean' and folded_bias is not None:
        array = array - folded_bias
      put(f'{path}/{ours}', array, f'{module}.{name}')

  head_prefix = 'projection_head' if any(k.startswith('projection_head.') for k in state) else None
  head_prefix = head_prefix or (
    'head.mlp' if any(k.startswith('head.mlp.') for k in state) else None
  )
  layers = _head_layers(state, head_prefix) if head_prefix else []
  for n, layer in enumerate(layers):
    path = 'projector/out' if n == len(layers) - 1 else f'projector/hidden/{n}'
    if 'bn' in layer and n == len(layers) - 1:
      raise UserError(f"'{layer['bn']}.weight': a BatchNorm after the head's last Linear.")
    bias = put_linear(f'{path}/linear', layer['linear'], bias_into=layer.get('bn'))
    if 'bn' in layer:
      put_bn(f'{path}/bn', layer['bn'], bias)
  mapped = {k for k in state if head_prefix and k.startswith(head_prefix + '.')}
  for key, ours in (
    ('prototypes.weight', 'prototypes/kernel'),
    ('head.last_layer.weight_v', 'prototypes/kernel'),
    ('head.last_layer.weight_g', 'prototypes/magnitude'),
  ):
    if key in state:
      put(ours, state[key].reshape(-1, 1) if ours.endswith('magnitude') else state[key], key)
      mapped.add(key)
  if 'fc.weight' in state:
    put_linear('head', 'fc')
    mapped |= {'fc.weight', 'fc.bias'}
  for key in state:
    if key in mapped or key.endswith('num_batches_tracked'):
      continue
    found = _backbone_path(key, stage_sizes)
    if found is None:
      raise UserError(
        f"'{key}' is not part of a torchvision-layout ResNet-50 or of the heads this code maps "
        '(projection_head, prototypes, head.mlp, head.last_layer, fc): convert a ResNet-50 '
        'state dict.'
      )
    module, attribute = found
    if module.endswith('conv'):
      if attribute != 'weight' or state[key].ndim != 4:
        raise UserError(f"'{key}' {state[key].shape}: expected a conv weight [O, I, kh, kw].")
      put(f'{module}/kernel', state[key].transpose(2, 3, 1, 0), key)
    elif attribute in _BN:
      put(f'{module}/{_BN[attribute]}', state[key], key)
    else:
      raise UserError(f"'{key}' is not a BatchNorm parameter or statistic.")
  return variables, source


def expected_shapes(variables: dict) -> dict[str, tuple[int, ...]]:
  """{path: shape} of this code's model at the width and head sizes the converted `variables`
  imply: a ResNet-50 and, as they have them, a PrototypeModel's head and a linear `head`."""
  params = variables['params']
  stem = params.get('backbone/stem/conv/kernel')
  if stem is None:
    raise UserError("The state dict has no 'conv1.weight': not a torchvision-layout ResNet.")
  kernel_size, _, channels, base = stem.shape
  stem_name = next((n for n, s in resnet.STEMS.items() if s.kernel_size == kernel_size), None)

  def build():
    rngs = nnx.Rngs(0)
    backbone = resnet.create_backbone(
      'resnet50', width=base / 64, stem=stem_name, num_channels=channels, rngs=rngs
    )
    parts = {'backbone': backbone}
    if 'prototypes/kernel' in params:
      num_layers = 1 + sum(p.endswith('linear/kernel') for p in params if '/hidden/' in p)
      model = PrototypeModel(
        backbone,
        hidden_dim=params.get('projector/hidden/0/linear/kernel', np.zeros((0, 0))).shape[1],
        embed_dim=params['prototypes/kernel'].shape[1],
        num_layers=num_layers,
        num_prototypes=params['prototypes/kernel'].shape[0],
        rngs=rngs,
        head='swav' if 'projector/hidden/0/bn/scale' in params or num_layers == 1 else 'dino',
        norm_last_layer='prototypes/magnitude' not in params,
      )
      parts.update(projector=model.projector, prototypes=model.prototypes)
    if 'head/kernel' in params:
      parts['head'] = nnx.Linear(backbone.feature_dim, params['head/kernel'].shape[1], rngs=rngs)
    return parts

  tree = {name: nnx.to_pure_dict(nnx.state(part)) for name, part in nnx.eval_shape(build).items()}
  return {path: tuple(x.shape) for path, x in config_base.flatten(tree, '/', pytree=True).items()}


def check_shapes(variables: dict, source: dict[str, str]) -> None:
  """Raises UserError naming the first converted array that this code's model lacks or shapes
  otherwise, or the first array of the model that the state dict lacks."""
  expected = expected_shapes(variables)
  converted = {**variables['params'], **variables['model_state']}
  for path, array in converted.items():
    if path not in expected or tuple(array.shape) != expected[path]:
      raise UserError(
        f"'{source[path]}' {tuple(array.shape)} does not fit this code's ResNet-50 "
        f"('{path}' {expected.get(path, 'absent')}, at the width of conv1): the checkpoint is "
        'not a ResNet-50 of torchvision layout.'
      )
  missing = next((path for path in expected if path not in converted), None)
  if missing:
    raise UserError(f"The state dict lacks the array of '{missing}': it is no full ResNet-50.")


def _nested(flat: dict[str, np.ndarray]) -> dict:
  tree = {}
  for path, array in flat.items():
    *parents, leaf = path.split('/')
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = array
  return tree


def convert_file(torch_path: str, out_dir: str) -> dict:
  """Reads, converts, checks and writes `torch_path` as the step-0 checkpoint of workdir
  `out_dir`; returns its record (the source, the width, the converted top-level parts)."""
  if checkpoint.has_checkpoint(out_dir):  # Before the reading and building.
    raise UserError(f'{out_dir} already holds a checkpoint: choose an empty --out.')
  state = unwrap(read_torch_file(torch_path), torch_path)
  variables, source = convert(state)
  check_shapes(variables, source)
  record = dict(
    converted_from=str(torch_path),
    backbone='resnet50',
    width=variables['params']['backbone/stem/conv/kernel'].shape[-1] / 64,
    parts=sorted({p.split('/')[0] for p in variables['params']}),
  )
  ckpt = checkpoint.Checkpointer(out_dir, keep=1)
  ckpt.save(0, {name: _nested(flat) for name, flat in variables.items()}, record)
  ckpt.close()
  return record


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--torch', required=True, help='A torch ResNet-50 state dict (.pth).')
  parser.add_argument('--out', required=True, help='The workdir to write, for init_from.')
  args = parser.parse_args(argv)
  jax.config.update('jax_platforms', 'cpu')
  record = exit_on_user_error(convert_file, args.torch, args.out)
  print(
    f'Wrote {args.out} ({", ".join(record["parts"])}); use it with '
    f'--config.init_from.workdir={args.out} --config.init_from.paths="(\'backbone\',)" '
    f'--config.model.width={record["width"]:g}'
  )


if __name__ == '__main__':
  main()
