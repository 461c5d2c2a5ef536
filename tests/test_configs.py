"""Every config in configs/: loads, has what the trainer reads, validates, gives the views it
says; a tiny version of each trains two steps on mock data, and its full-size train step lowers
on the 8 devices; command-line overrides reach the stages of the staged ImageNet configs."""

import functools
import glob
import json
import os

from absl import flags
import chex
from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
from ml_collections import config_flags
import numpy as np
import pytest

from semi_ssl import config_base, main, methods, parallel, train
from semi_ssl.data import augment, datasets, pipeline
from semi_ssl.methods import base
import tfds_mock
from helpers import REPO

CONFIGS = sorted(
  os.path.relpath(path, REPO)
  for path in glob.glob(os.path.join(REPO, 'configs', '**', '*.py'), recursive=True)
)
TFDS_CONFIGS = [path for path in CONFIGS if not path.endswith('digits.py')]
STAGED_CONFIGS = ['configs/suave/imagenet_10pct.py', 'configs/suave/imagenet_1pct.py']
REQUIRED_KEYS = (
  'method',
  'seed',
  'dataset',
  'data_dir',
  'batch_size',
  'labelled_batch_size',
  'num_steps',
  'num_epochs',
  'epoch_stream',
  'log_every',
  'eval_every',
  'checkpoint_every',
  'keep_checkpoints',
  'model',
  'augment',
  'optimizer',
  'eval',
  'init_from',
  'name',
)
# Side of the stored images of each dataset (ImageNet: config.decode_size).
IMAGE_SIDE = {'digits': 8, 'cifar10': 32, 'cifar100': 32}


def load(path: str, *overrides: str) -> ml_collections.ConfigDict:
  """The config as `semi_ssl.main` builds it: config_flags, locked, with `overrides`."""
  argv = ['main', f'--config={os.path.join(REPO, path)}', *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    'config', flag_values=flag_values, lock_config=True, sys_argv=argv
  )
  flag_values(argv)
  given = dict(flag[len('--config.') :].split('=', 1) for flag in overrides)
  main._unset_other_labelled_key(flag_values.config, given)  # As main.parse_flags does.
  return flag_values.config


# Stand-in sizes for lengths in epochs (the trainer's are the loaded data's): one step an epoch.
STAND_IN = dict.fromkeys(config_base.EPOCH_STREAMS, 1)


def stages(config: ml_collections.ConfigDict, workdir: str = '/workdir'):
  """The configs that run: the stages, with `init_from.stage` resolved, or the config."""
  return [stage for stage, _ in main.stage_plan(config, workdir)]


def channels(config: ml_collections.ConfigDict) -> int:
  return 1 if config.dataset == 'digits' else 3


def test_suave_semppl_and_the_baseline_have_a_config_for_every_benchmark():
  benchmarks = ('digits', 'cifar10', 'cifar100', 'imagenet_1pct', 'imagenet_10pct')
  expected = {
    f'configs/{method}/{benchmark}.py'
    for method in ('suave', 'semppl', 'supervised')
    for benchmark in benchmarks
  }
  assert expected <= set(CONFIGS)


@pytest.mark.parametrize('path', CONFIGS)
def test_config_and_its_stages_have_the_keys_the_trainer_reads(path):
  config = load(path)
  assert isinstance(config, ml_collections.ConfigDict)
  for stage in [config, *stages(config)]:
    missing = [key for key in REQUIRED_KEYS if key not in stage]
    assert not missing, f'{path} stage {stage.name!r} lacks {missing}'
    assert (stage.labels_per_class is None) != (stage.label_fraction is None)
    assert stage.method in stage, f'{path}: no config.{stage.method} section'
    for key in ('blur_prob', 'solarize_prob'):
      assert isinstance(stage.augment[key], tuple) and stage.augment[key]
    augment.augment_config_from(stage, (0.5,) * channels(stage), (0.25,) * channels(stage))
    assert stage.eval.batch_size % 8 == 0 and stage.eval.batch_size <= 1024


@pytest.mark.parametrize('path', TFDS_CONFIGS)
def test_benchmark_configs_flip_and_distort_colour(path):
  """But S4L's rotation and VAT, whose official crops are flipped, never recoloured."""
  config = load(path)
  main_stage = stages(config)[0]
  assert main_stage.augment.flip
  if main_stage.method == 's4l':
    return
  assert min(main_stage.augment.color_jitter) > 0
  assert main_stage.augment.grayscale_prob > 0


# The ops of each method's official code (augment.FAMILIES); the configs cite the lines.
METHOD_FAMILY = {
  'suave': 'torchvision_bilinear',
  'daino': 'torchvision_bicubic',
  'semppl': 'byol',
  'supervised': 'torchvision_bilinear',  # Suave's labelled-image views.
  'simclrv2': 'simclr',
  's4l': 'simclr',  # TF's crop ops, as S4L's inception_crop.
  'sela': 'torchvision_bilinear',  # self-label's data.py, cifar.py.
}


@pytest.mark.parametrize('path', CONFIGS)
def test_configs_augment_as_their_method_family(path):
  """Digits keep this code's own ops, on which their results were measured."""
  for stage in stages(load(path)):
    expected = 'ours' if stage.dataset == 'digits' else METHOD_FAMILY[stage.method]
    assert stage.augment.family == expected


@pytest.mark.parametrize('path', [p for p in CONFIGS if p not in TFDS_CONFIGS])
def test_digits_configs_validate(path):
  config = load(path)
  for stage in [config, *stages(config)]:
    config_base.validate(stage, num_devices=8, workdir=None)


@pytest.mark.parametrize('path', TFDS_CONFIGS)
def test_tfds_configs_validate_once_their_data_is_prepared(path, tmp_path):
  empty, prepared = tmp_path / 'empty', tmp_path / 'prepared'
  config = load(path, f'--config.data_dir={empty}')
  with pytest.raises(ValueError, match=f"dataset '{config.dataset}' is not prepared in {empty}"):
    config_base.validate(config, num_devices=8, workdir=None)
  tfds_mock.prepare_for(prepared, config.dataset, num_examples=4)
  config = load(path, f'--config.data_dir={prepared}')
  for stage in [config, *stages(config)]:
    assert stage.data_dir == str(prepared)  # The override reaches every stage.
    config_base.validate(stage, num_devices=8, workdir=str(tmp_path / 'workdir'))


@pytest.mark.parametrize('path', CONFIGS)
def test_views_have_the_configured_shapes(path):
  """multi_crop of the unchanged config on a batch of 2 stored images (shapes only)."""
  for stage in stages(load(path)):
    side = IMAGE_SIDE.get(stage.dataset, stage.decode_size)
    c = channels(stage)
    cfg = augment.augment_config_from(stage, (0.5,) * c, (0.25,) * c, (side, side, c))
    images = jnp.zeros((2, side, side, c), jnp.uint8)
    views = jax.eval_shape(
      functools.partial(augment.multi_crop, cfg=cfg), jax.random.PRNGKey(0), images
    )
    aug = stage.augment
    expected = [(2, aug.global_size, aug.global_size, c)] * aug.num_global_crops + [
      (2, aug.local_size, aug.local_size, c)
    ] * aug.num_local_crops
    assert [v.shape for v in views] == expected
    assert all(v.dtype == jnp.float32 for v in views)
    labelled = jax.eval_shape(
      functools.partial(augment.multi_crop, cfg=cfg.labelled_views), jax.random.PRNGKey(0), images
    )
    if aug.labelled is None:
      assert [v.shape for v in labelled] == expected
    else:
      assert [v.shape for v in labelled] == [(2, aug.labelled.size, aug.labelled.size, c)] * (
        aug.labelled.num_crops
      )


def test_imagenet_suave_views():
  """The paper's multi-crop, then two 224-pixel crops for the fine-tune."""
  suave, finetune = stages(load('configs/suave/imagenet_10pct.py'))
  assert (suave.decode_size, suave.model.backbone, suave.model.stem) == (
    256,
    'resnet50',
    'imagenet',
  )
  assert (suave.augment.num_global_crops, suave.augment.global_size) == (2, 224)
  assert (suave.augment.num_local_crops, suave.augment.local_size) == (8, 96)
  assert (finetune.augment.num_global_crops, finetune.augment.global_size) == (2, 224)
  assert finetune.augment.num_local_crops == 0


@pytest.mark.parametrize(
  'path', [p for p in CONFIGS if p.startswith(('configs/suave/imagenet', 'configs/daino/imagenet'))]
)
def test_imagenet_labelled_images_get_the_official_single_crop(path):
  """main_suave.py / main_daino.py `tr_lab`: one 224 crop with milder colour than the
  unlabelled views, milder still in Suave's fine-tune; the crop follows the global size."""
  for overrides, size in (((), 224), (('--config.augment.global_size=28',), 28)):
    for stage in stages(load(path, *overrides)):
      labelled = stage.augment.labelled
      assert (labelled.num_crops, labelled.size, labelled.scale) == (1, size, (0.08, 1.0))
      assert (labelled.blur_prob, labelled.solarize_prob) == (0.0, 0.0)
      finetune = stage.name == 'finetune'
      assert (labelled.family, labelled.color_jitter, labelled.grayscale_prob) == (
        ('torchvision_bilinear', (0.1,) * 4, 0.0)
        if finetune
        else ('torchvision_bilinear', (0.4, 0.4, 0.4, 0.1), 0.2)
      )


@pytest.mark.parametrize(
  'path', [p for p in CONFIGS if p.startswith(('configs/suave/', 'configs/daino/'))]
)
def test_suave_and_daino_mix_and_weigh_as_the_official_code_on_imagenet_only(path):
  """ImageNet (every stage): the labelled batch extended by mixup or CutMix, Suave's global
  views mixed too, terms weighed by crops (train_*perc.sh, finetune_*perc.sh: --mixup_lab true
  --mixup_unlab true for Suave); elsewhere the former mixup (if any) and weights."""
  method = path.split('/')[1]
  official = 'imagenet' in path
  for stage in stages(load(path)):
    hp = stage[method]
    assert (hp.cutmix_alpha, hp.mixup_mode, hp.loss_weighting) == (
      (1.0, 'extend', 'crops') if official else (0.0, 'replace', 'images')
    )
    assert hp.get('mixup_unlabelled', False) == (official and method == 'suave')
    assert hp.mixup_alpha == 1.0 or not official


@pytest.mark.parametrize('method', ['suave', 'daino', 'semppl'])
def test_digits_official_option_takes_the_imagenet_recipes_values(method):
  """`configs/<method>/digits.py:official`: every method key it changes, and the augmentation
  family, as the ImageNet config (which cites the official code); the labelled images get a view
  of their own where the ImageNet config gives them one."""
  plain, official = (
    load(f'configs/{method}/digits.py'),
    load(f'configs/{method}/digits.py:official'),
  )
  imagenet = load(f'configs/{method}/imagenet_10pct.py')
  changed = [k for k in plain[method] if plain[method][k] != official[method][k]]
  assert changed and {k: official[method][k] for k in changed} == {
    k: imagenet[method][k] for k in changed
  }
  assert official.augment.family == imagenet.augment.family != plain.augment.family
  if imagenet.augment.labelled is None:
    assert official.augment.labelled is None
  else:
    labelled = official.augment.labelled
    assert (labelled.family, labelled.num_crops, labelled.size) == (
      imagenet.augment.labelled.family,
      1,
      official.augment.global_size,
    )


SWAV_FLAGS = ('--config.init_from.workdir=/swav/run', "--config.init_from.paths=('backbone',)")


@pytest.mark.parametrize('swav, first_paths', [('/swav/run', ('backbone',)), (None, ())])
@pytest.mark.parametrize('path', STAGED_CONFIGS)
def test_swav_checkpoint_decides_how_the_first_stage_starts(path, swav, first_paths, tmp_path):
  """Given, the first stage copies the SwAV backbone; not, it starts from scratch (no paths).
  Either way every stage validates."""
  swav_flags = SWAV_FLAGS if swav else ()
  config = load(path, f'--config.data_dir={tmp_path}', *swav_flags)
  tfds_mock.prepare_for(tmp_path, config.dataset, num_examples=4)
  suave, finetune = stages(config, '/work')
  assert (suave.name, suave.init_from.workdir, suave.init_from.paths) == (
    'suave',
    swav,
    first_paths,
  )
  assert (finetune.name, finetune.init_from.workdir, finetune.init_from.paths) == (
    'finetune',
    '/work/suave',
    ('backbone', 'projector'),
  )
  for stage in (suave, finetune):
    config_base.validate(stage, num_devices=8, workdir=None)


@pytest.mark.parametrize('path', STAGED_CONFIGS)
def test_overrides_reach_the_stages(path):
  suave, finetune = stages(
    load(
      path,
      '--config.seed=3',
      '--config.augment.global_size=192',
      '--config.suave.temperature=0.2',
      '--config.finetune.optimizer.learning_rate=0.5',
      '--config.finetune.num_steps=7',
      '--config.batch_size=128',
    )
  )
  for stage in (suave, finetune):
    assert (stage.seed, stage.augment.global_size, stage.suave.temperature) == (3, 192, 0.2)
    assert stage.batch_size == 128
  assert suave.optimizer.learning_rate == 0.4 and suave.num_epochs == 100
  assert finetune.optimizer.learning_rate == 0.5
  assert (finetune.num_steps, finetune.num_epochs) == (7, None)
  # The fine-tune keeps its own values of what it changes.
  default_finetune = stages(load(path))[1]
  assert finetune.augment.num_local_crops == 0 and finetune.optimizer.warmup_epochs == 0
  assert finetune.suave.label_smoothing == default_finetune.suave.label_smoothing


@pytest.mark.parametrize('key', ['simclrv2.temperature', 'optimizer.momentum'])
def test_an_override_of_a_stage_key_changes_that_stage_alone(key):
  # Keys that the distill stage follows from the top level rather than sets itself.
  value_of = lambda config: functools.reduce(getattr, key.split('.'), config)
  config = load('configs/simclrv2/digits.py', f'--config.distill.{key}=0.7')
  pretrain, finetune, distill = stages(config)
  assert value_of(distill) == 0.7
  assert value_of(pretrain) == value_of(finetune) == value_of(config) != 0.7
  top = load('configs/simclrv2/digits.py', f'--config.{key}=0.7')
  assert [value_of(stage) for stage in stages(top)] == [0.7] * 3  # A top-level one reaches all.


def _param_shapes(stage: ml_collections.ConfigDict) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{parameter path: shape} of the stage's model on ImageNet, built abstractly (no compile)."""
  data = base.DataInfo(num_classes=1000, image_shape=(stage.decode_size, stage.decode_size, 3))
  method = methods.REGISTRY[stage.method](stage, data, parallel.create_mesh())
  params = nnx.to_pure_dict(
    nnx.state(nnx.eval_shape(lambda: method.create_model(nnx.Rngs(0))), nnx.Param)
  )
  return {
    tuple(str(k.key) for k in path): leaf.shape
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
  }


@pytest.mark.parametrize('path', STAGED_CONFIGS)
def test_stages_hand_over_parameters_both_models_have(path):
  suave, finetune = stages(load(path, *SWAV_FLAGS))
  before, after = _param_shapes(suave), _param_shapes(finetune)
  assert set(suave.init_from.paths) < {p[0] for p in before}  # Not everything: no prototypes.
  for prefix in finetune.init_from.paths:
    copied = {p: shape for p, shape in before.items() if p[0] == prefix}
    assert copied and copied == {p: shape for p, shape in after.items() if p[0] == prefix}


# Every config file, and the staged variant of the digits one.
RUNS = CONFIGS + [
  'configs/suave/digits.py:with_baseline',
  # S4L's other variants at their ImageNet sizes (8 exemplar copies; VAT in float32).
  'configs/s4l/imagenet_10pct.py:exemplar',
  'configs/s4l/imagenet_10pct.py:vat_entmin',
  'configs/s4l/imagenet_10pct.py:moam',  # 4x width; retrain's pseudo-labels and teacher.
]
OFFICIAL_DIGITS = [f'configs/{m}/digits.py:official' for m in ('suave', 'daino', 'semppl')]


def _step(stage: ml_collections.ConfigDict, data: base.DataInfo, mesh: Mesh, mean, std):
  """(jitted train step, state initializer, state sharding, whether the step reads unlabelled
  images) of `stage` on `mesh`, as `train.train_and_evaluate` builds them."""
  method = methods.REGISTRY[stage.method](stage, data, mesh)
  augment_cfg = augment.augment_config_from(stage, mean, std, data.image_shape)
  _, init, step = train.step_builders(stage, method, augment_cfg)
  sharding = train.state_sharding(method, jax.eval_shape(init))
  step = jax.jit(step, out_shardings=(sharding, parallel.replicated(mesh)), donate_argnums=0)
  return step, init, sharding, method.uses_unlabelled


# A tiny version of each config: its method, optimiser, augmentation and stem with a narrow
# tiny backbone (compiling a ResNet-18/50 step takes minutes on 2 CPU cores), 8 + 8 images and
# two steps; ImageNet's 224/96-pixel crops of 256-pixel images scaled down 8x.
TINY = (
  '--config.batch_size=8',
  '--config.labelled_batch_size=8',
  '--config.num_steps=2',
  '--config.model.backbone=resnet_tiny',
  '--config.model.width=0.25',
)
TINY_IMAGENET = (
  '--config.decode_size=32',
  '--config.augment.global_size=28',
  '--config.augment.local_size=12',
)


@pytest.mark.parametrize('path', RUNS + OFFICIAL_DIGITS)
def test_config_trains_on_mock_data(path, tmp_path):
  """Two steps of each stage of the tiny config on one device, on mock TFDS data (CIFAR,
  ImageNet) or the digits: finite losses, no step skipped, the parameters moved."""
  num_examples = 40
  config = load(path)
  overrides = [f'--config.data_dir={tmp_path}', *TINY]
  if config.dataset == 'imagenet2012':
    overrides += TINY_IMAGENET
  if 'finetune' in config:
    overrides.append('--config.finetune.num_steps=2')
  if config.optimizer.schedule == 'piecewise':  # Its decays must come after a warm-up: none.
    overrides.append('--config.optimizer.warmup_steps=0')
  if config.dataset != 'digits':
    tfds_mock.prepare_for(tmp_path, config.dataset, num_examples)
    overrides.append('--config.val_size=0')  # Mock records: see tfds_mock.mock_data.
  mesh = Mesh(
    np.asarray(jax.devices()[:1]).reshape(1, 1), (parallel.DATA_AXIS, parallel.MODEL_AXIS)
  )
  # Threefry initialisation compiles for ~20 s per model on CPU; rbg keys are as good here.
  with jax.default_prng_impl('unsafe_rbg'), tfds_mock.mock_data(tmp_path, num_examples):
    for stage in stages(load(path, *overrides)):
      if stage.dataset.startswith('cifar'):  # 40 mock images lack some of CIFAR-100's classes.
        stage.labels_per_class, stage.label_fraction = None, 0.25
      splits = datasets.load(stage)
      sizes = dict(unlabelled=len(splits.unlabelled_images), labelled=len(splits.labelled_labels))
      stage = config_base.resolve(stage, sizes)  # As train.train_and_evaluate does.
      data = base.DataInfo(
        num_classes=splits.num_classes,
        image_shape=splits.image_shape,
        num_unlabelled=len(splits.unlabelled_images),
      )
      step, init, sharding, unlabelled = _step(stage, data, mesh, splits.mean, splits.std)
      state = jax.jit(init, out_shardings=sharding)()
      initial = jax.device_get(state.params)
      for s in range(2):
        state, metrics = step(
          state,
          jax.device_put(
            pipeline.host_batch(
              splits, s, seed=0, labelled_batch_size=8, batch_size=8 if unlabelled else None
            )
          ),
        )
        assert np.isfinite(metrics['loss']), (stage.name, s)
      assert (int(state.step), int(state.skipped_steps)) == (2, 0)
      assert any(
        not np.array_equal(new, old)
        for new, old in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(initial))
      )


@pytest.mark.parametrize('path', RUNS)
def test_full_size_step_lowers_on_8_devices(path):
  """The train step of each stage of the unchanged config (backbone, width, crops, batch) on
  the 8 devices, lowered on abstract inputs placed as the trainer places them (no compile):
  shapes and shardings fit, and the step returns a state shaped like the one it takes."""
  for stage in stages(load(path)):
    stage = config_base.resolve(stage, STAND_IN)
    mesh = parallel.create_mesh(stage.mesh.model)
    shape = datasets.image_shape(stage)
    data = base.DataInfo(
      num_classes=datasets.num_classes(stage),
      image_shape=shape,
      num_unlabelled=STAND_IN['unlabelled'],
    )
    step, init, sharding, unlabelled = _step(
      stage, data, mesh, (0.5,) * shape[-1], (0.25,) * shape[-1]
    )
    state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      jax.eval_shape(init),
      sharding,
    )
    rows = parallel.batch_sharding(mesh)
    images = lambda n: jax.ShapeDtypeStruct((n, *shape), jnp.uint8, sharding=rows)
    batch = {
      'labelled': {
        'images': images(stage.labelled_batch_size),
        'labels': jax.ShapeDtypeStruct((stage.labelled_batch_size,), jnp.int32, sharding=rows),
      }
    }
    if unlabelled:
      batch['unlabelled'] = {
        'images': images(stage.batch_size),
        'indices': jax.ShapeDtypeStruct((stage.batch_size,), jnp.int32, sharding=rows),
      }
    new_state, metrics = step.lower(state, batch).out_info
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
    assert metrics['loss'].shape == ()


def test_with_baseline_follows_the_top_level_data_keys():
  config = config_base.load_config_file(
    os.path.join(REPO, 'configs/suave/digits.py'), 'with_baseline'
  )
  config.seed, config.dataset, config.data_file, config.val_size = 3, 'npz', '/data/mine.npz', 6
  baseline, method_stage = config.stages
  for key in config_base.DATA_KEYS:
    assert baseline[key] == method_stage[key] == config[key], key
  assert (baseline.method, method_stage.method) == ('supervised', 'suave')


def test_one_flattener_gives_dotted_config_keys_and_slashed_state_paths():
  """Config values: only dicts are entered. Train states: every pytree node, NNX's `value`
  level (an attribute in memory, a dict key in a checkpoint's metadata) left out."""
  config = {'a': {'b': [1, {'c': 2}], 'd': None, 'e': {}}, 'f': 0.5}
  assert config_base.flatten(config) == {'a.b': [1, {'c': 2}], 'a.d': None, 'a.e': {}, 'f': 0.5}
  params = nnx.state(nnx.Linear(1, 2, rngs=nnx.Rngs(0)))
  saved = {'bias': {'value': 1}, 'kernel': {'value': 2}}
  for tree in (params, saved):
    state = {'opt': [3, (4, None)], 'params': tree, 'empty': {}}
    assert list(config_base.flatten(state, '/', pytree=True, skip=('value',))) == [
      'opt/0',
      'opt/1/0',
      'params/bias',
      'params/kernel',
    ]


def test_changed_keys_compares_json_normalised_dotted_keys():
  config = config_base.get_base_config()
  saved = json.loads(config.to_json_best_effort(indent=2))  # As config.json holds it.
  same = config.copy_and_resolve_references()
  same.augment.global_scale = (0.5, 1.0)  # A tuple in the config, a list in the file.
  same.eval_every, same.data_dir, same.eval.batch_size = 7, '/elsewhere', 64  # May change.
  same.init_from.workdir = 'moved/pretrain'
  assert config_base.changed_keys(saved, json.loads(same.to_json_best_effort())) == []
  other = same.copy_and_resolve_references()
  other.seed, other.optimizer.learning_rate, other.augment.global_scale = 1, 0.05, (0.4, 1.0)
  other.init_from.paths = ('backbone',)
  current = json.loads(other.to_json_best_effort())
  changed = config_base.changed_keys(saved, current)
  assert changed == ['augment.global_scale', 'init_from.paths', 'optimizer.learning_rate', 'seed']
  assert config_base.changed_keys(saved, current, ignore=('augment', 'optimizer', 'init_from')) == [
    'data_dir',
    'eval.batch_size',
    'eval_every',
    'seed',
  ]  # `ignore` replaces the default.
  assert config_base.describe_changes(saved, current, changed, limit=2) == (
    'augment.global_scale was [0.5, 1.0], now [0.4, 1.0]; init_from.paths was [], now '
    '["backbone"] (and 2 more)'
  )
  # A key only one side has counts, shown as absent.
  del current['nonfinite'], current['model']['width']
  current['new_key'] = {'x': 1}
  assert config_base.changed_keys(saved, current) == [
    'augment.global_scale',
    'init_from.paths',
    'model.width',
    'new_key.x',
    'optimizer.learning_rate',
    'seed',
  ]
  assert config_base.describe_changes(saved, current, ['model.width', 'new_key.x']) == (
    'model.width was 1.0, now absent; new_key.x was absent, now 1'
  )
