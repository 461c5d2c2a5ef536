"""A run's final model, alone, as one .npz file, and a function that runs it without the trainer.

    python -m semi_ssl.export --workdir DIR --out MODEL.npz

DIR is a run's (or one stage's) workdir: its latest checkpoint and config.json. The file holds:
  'params/<path>'       every parameter, at this code's '/'-joined paths ('backbone/stem/conv/
                        kernel', 'head/bias', ...): the Polyak average where the run kept one
                        (`config.polyak_decay`), the weights its evaluations read
  'model_state/<path>'  BatchNorm running statistics ('backbone/stem/bn/mean', ...)
  'export.json'         a string: {'format': 1, 'config': the run's config in steps (as
                        `config_base.resolve` makes it), 'data': the model's `DataInfo`,
                        'eval_view': {'size', 'mean', 'std', 'crop_fraction'} of
                        `augment.eval_view`}
No optimiser or method state (EMA teachers, queues). It is read with `np.load(path)` (no pickle).

`load_exported(path)` rebuilds the model from the config (`Method.create_model`) and returns
`apply(images)`: uint8 images [B, H, W, C] -> class logits [B, num_classes] float32, the eval
view and `Method.predict` the trainer's evaluation applies.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from semi_ssl import checkpoint, config_base, methods, parallel, train
from semi_ssl.data import augment, datasets
from semi_ssl.errors import UserError, exit_on_user_error
from semi_ssl.methods import base

FORMAT = 1
METADATA_KEY = 'export.json'
COLLECTIONS = ('params', 'model_state')


def export(workdir: str | os.PathLike, out: str | os.PathLike) -> dict:
  """Writes the final model of `workdir` to `out` (see the module docstring); returns its
  'export.json' record. Loads the run's data for the model's `DataInfo` and eval statistics."""
  config_path = epath.Path(workdir) / train.CONFIG_FILE
  if not config_path.exists():
    raise UserError(
      f'{workdir} holds no {train.CONFIG_FILE}: point --workdir at a run (or a stage).'
    )
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  variables = checkpoint.load_variables(workdir)
  splits = datasets.load(config)
  num_examples = dict(
    unlabelled=len(splits.unlabelled_images), labelled=len(splits.labelled_labels)
  )
  config = config_base.resolve(config, num_examples)
  record = dict(
    format=FORMAT,
    config=json.loads(config.to_json_best_effort()),
    data=dataclasses.asdict(train.data_info(splits)),
    eval_view=dict(
      size=config.augment.global_size,
      mean=list(splits.mean),
      std=list(splits.std),
      crop_fraction=config.eval.crop_fraction,
    ),
  )
  arrays = {
    f'{name}/{path}': np.asarray(array)
    for name in COLLECTIONS
    for path, array in variables[name].items()
  }
  with epath.Path(out).open('wb') as file:
    np.savez(file, **arrays, **{METADATA_KEY: np.array(json.dumps(record))})
  return record


def load_exported(path: str | os.PathLike):
  """`apply(images)` of the model exported to `path`: uint8 [B, H, W, C] -> logits [B, C]
  (jitted), on one device."""
  with np.load(path, allow_pickle=False) as file:
    arrays = dict(file)
  if METADATA_KEY not in arrays:
    raise UserError(f'{path} is no semi_ssl export (no {METADATA_KEY}): run semi_ssl.export.')
  record = json.loads(str(arrays.pop(METADATA_KEY)))
  config = ml_collections.ConfigDict(record['config'])
  data = base.DataInfo(
    **{k: tuple(v) if isinstance(v, list) else v for k, v in record['data'].items()}
  )
  mesh = jax.sharding.Mesh(
    np.asarray(jax.devices()[:1]).reshape(1, 1), (parallel.DATA_AXIS, parallel.MODEL_AXIS)
  )
  method = methods.REGISTRY[config.method](config, data, mesh)
  graphdef, *abstract = nnx.split(
    nnx.eval_shape(lambda: method.create_model(nnx.Rngs(0))), nnx.Param, ...
  )
  variables = [
    checkpoint.copy_subtrees(
      state,
      {p.removeprefix(f'{name}/'): a for p, a in arrays.items() if p.startswith(f'{name}/')},
      tuple(nnx.to_pure_dict(state)),
      each_prefix_matches=False,
    )
    for name, state in zip(COLLECTIONS, abstract)
  ]
  view = record['eval_view']

  @jax.jit
  def apply(images: jax.Array) -> jax.Array:
    x = augment.eval_view(images, view['size'], view['mean'], view['std'], view['crop_fraction'])
    return method.predict(nnx.merge(graphdef, *variables), x)

  return apply


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help="A run's (or a stage's) workdir.")
  parser.add_argument('--out', required=True, help='The .npz file to write.')
  args = parser.parse_args(argv)
  exit_on_user_error(export, args.workdir, args.out)
  print(f'Wrote {args.out}; load it with semi_ssl.export.load_exported.')


if __name__ == '__main__':
  main()
