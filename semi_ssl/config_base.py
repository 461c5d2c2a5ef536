"""Defaults shared by every config, and the checks a config passes before anything compiles.

A config file in `configs/` starts from `get_base_config()` and changes what its method and
benchmark need, so every run can be changed the same way from the command line
(`--config.seed=3`, `--config.optimizer.learning_rate=0.1`, ...).
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
from typing import Any

import jax
import ml_collections
from ml_collections import config_dict

from semi_ssl.errors import require


def get_base_config() -> ml_collections.ConfigDict:
  """The keys every config has; values are the digits defaults."""
  c = ml_collections.ConfigDict()
  c.method = 'supervised'
  c.seed = 0

  # Data: the labelled subset is `labels_per_class` images of each class (or a stratified
  # `label_fraction` of the train split), chosen by `seed`; the test split never changes.
  # Nor does the validation split: `val_size` train images, stratified, in neither the
  # labelled nor the unlabelled images, the same for every seed, evaluated with the test split
  # (val_top1, val_knn_top1, ...). Hyperparameters are chosen on it, never on the test split.
  # None: the dataset's standard size (10% of the train split: digits 144, CIFAR 5,000;
  # ImageNet: a minival of 10,000 images in neither SimCLR subset); 0: no validation split.
  c.dataset = 'digits'
  c.data_dir = config_dict.placeholder(str)
  c.data_file = config_dict.placeholder(str)  # dataset='npz': the .npz file of your data.
  c.decode_size = 256  # ImageNet: side of the stored square that crops are taken from.
  c.labels_per_class = config_dict.placeholder(int)
  c.label_fraction = config_dict.placeholder(float)
  c.val_size = config_dict.placeholder(int)

  # Global images per step: `batch_size` unlabelled, `labelled_batch_size` labelled (drawn
  # from reshuffled passes over the labelled subset, so 10 labelled images can fill it).
  c.batch_size = 256
  c.labelled_batch_size = 64
  # Gradient accumulation: each step's batches go through the model as this many micro-batches
  # (a fraction of the activation memory), their gradients averaged into one optimiser update;
  # the step counter, schedules and batches are the unaccumulated run's. BatchNorm statistics,
  # and whatever a loss computes over its batch (negatives, Sinkhorn, queues), are per
  # micro-batch (train.accumulated_value_and_grad). Divides both batches per device.
  c.accumulate_steps = 1

  # Length: `num_steps`, or `num_epochs` of the `epoch_stream` ('unlabelled': the unlabelled
  # images at `batch_size` a step; 'labelled': the labelled subset at `labelled_batch_size`),
  # turned into steps when the run starts (`resolve`). Give exactly one; the same holds for
  # every other `X_steps` key with an `X_epochs` twin (e.g. optimizer.warmup_steps).
  c.num_steps = config_dict.FieldReference(1000, field_type=int)  # Typed: None unsets it.
  c.num_epochs = config_dict.placeholder(float)
  c.epoch_stream = 'unlabelled'
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  # A step whose loss, gradients or result (parameters, state) are not finite is never
  # applied; then the run stops naming the step ('stop') or goes on and counts it ('skip').
  c.nonfinite = 'stop'

  # Devices along the mesh's model axis: 1 replicates the train state on every device;
  # more splits its large arrays over that many devices (FSDP), for models too big for one.
  c.mesh = ml_collections.ConfigDict(dict(model=1))

  # dtype: what convolutions and heads compute in (parameters and optimiser state stay
  # float32); remat: recompute each residual block's activations in the backward pass.
  c.model = ml_collections.ConfigDict(
    dict(backbone='resnet_tiny', width=1.0, stem='tiny', dtype='float32', remat=False)
  )

  c.augment = ml_collections.ConfigDict(
    dict(
      # Whose crop sampler, resizing and jitter ops (augment.FAMILIES): 'ours' (crop sides
      # clipped to the image, bilinear, brightness scaled, contrast per channel, saturation
      # blended with the grayscale image), 'torchvision_bilinear' (SwAV, Suave),
      # 'torchvision_bicubic' (DINO, Daino) or 'byol' (BYOL, SemPPL).
      family='ours',
      num_global_crops=2,
      global_size=8,
      global_scale=(0.5, 1.0),
      num_local_crops=0,
      local_size=6,
      local_scale=(0.2, 0.5),
      flip=False,
      # Ranges of (brightness, contrast, saturation, hue), as torchvision's ColorJitter, applied
      # with p=0.8; (0, 0, 0, 0) is off. SimCLR's strength s is (0.8s, 0.8s, 0.8s, 0.2s).
      color_jitter=(0.0, 0.0, 0.0, 0.0),
      grayscale_prob=0.0,
      blur_prob=(0.0,),
      local_blur_prob=0.0,
      solarize_prob=(0.0,),
      # The labelled images' views: None gives them the views above; else a ConfigDict of
      # num_crops, size, scale, flip, color_jitter, grayscale_prob, blur_prob, solarize_prob,
      # family.
      labelled=None,
    )
  )

  c.optimizer = ml_collections.ConfigDict(
    dict(
      name='sgd',  # sgd | lars | adamw
      # Peak learning rate, reached after the warm-up: `learning_rate` scaled by `lr_scaling`
      # with the global batch of the epoch stream B (`resolve`): 'none' (as given), 'linear'
      # (x B / 256, Goyal et al. 2017) or 'sqrt' (x sqrt(B), SimCLR v1/v2's appendix).
      learning_rate=0.1,
      lr_scaling='none',
      warmup_steps=config_dict.FieldReference(50, field_type=int),
      warmup_epochs=config_dict.placeholder(float),  # Instead of warmup_steps.
      # After the warm-up: 'cosine' decays to peak * end_learning_rate_factor at the run's end;
      # 'piecewise' holds the peak, multiplied by decay_factor after each of decay_boundaries
      # (fractions of the run's steps, increasing, after the warm-up; S4L's schedule).
      schedule='cosine',
      end_learning_rate_factor=0.0,
      decay_boundaries=(),
      decay_factor=0.1,
      momentum=0.9,
      nesterov=False,
      weight_decay=5e-4,  # not applied to biases and normalisation parameters
      b1=0.9,
      b2=0.999,  # adamw
      trust_coefficient=0.001,  # lars
      grad_clip_norm=0.0,
    )
  )  # 0 = off

  # Polyak averaging: None or 0 off; else the train state keeps an exponential moving average
  # of the parameters with this decay (per step, from the initial parameters; BatchNorm
  # statistics not averaged), which every evaluation, the kNN probe, and a later stage's
  # init_from or frozen teacher read instead of the parameters (train.PolyakTrainState).
  c.polyak_decay = config_dict.placeholder(float)

  # (START, STOP): a jax.profiler trace of steps START..STOP (counted from 1, as the logs count
  # them) in WORKDIR/plugins/profile, where TensorBoard's profiler reads it (profiling.py);
  # () traces nothing.
  c.profile_steps = ()

  # Evaluation: test top-1/top-5 of the method's classifier and a weighted kNN probe on
  # backbone features with the labelled subset as the memory bank.
  c.eval = ml_collections.ConfigDict(
    dict(batch_size=512, knn_k=20, knn_temperature=0.07, crop_fraction=1.0)
  )  # ImageNet: 0.875 (256 -> 224)

  # Initialise parameter subtrees (e.g. 'backbone') from another run's latest checkpoint:
  # `workdir` is a path, or `stage` names an earlier stage of this run.
  c.init_from = ml_collections.ConfigDict(
    dict(workdir=config_dict.placeholder(str), stage=config_dict.placeholder(str), paths=())
  )

  # Multi-stage pipelines: a tuple of full configs, each with a `name`; empty for one stage.
  c.stages = ()
  c.name = ''
  # A stage's finished run elsewhere (e.g. one pretraining shared by the 1% and 10% ImageNet
  # configs): read, never trained here; `init_from.stage` naming the stage loads it from there.
  # Its config there may differ in the labelled subset only. A stage made by `derived_stage`
  # follows its parent's value, so with the others derived with `finished_workdir=None`,
  # `--config.finished_workdir=OTHER_DIR/pretrain` reaches the pretraining stage alone.
  c.finished_workdir = config_dict.placeholder(str)
  return c


# Keys of a method's section added after runs were made, at the value that trains as those runs
# did: like a key added to `get_base_config` at its default, they let such a run resume
# (`train.check_config_unchanged`) and keep its config hash (benchmarks/digits_table.py).
ADDED_METHOD_KEYS = {'s4l.label_smoothing': 0.0}

# Keys a resumed run may change (every other difference from the config the run started with
# stops it): they change what is logged, evaluated, kept or where things are found, never
# the parameters a step computes.
RESUME_MAY_CHANGE = (
  'log_every',
  'eval_every',  # How often the run reports; evaluation reads the state.
  'checkpoint_every',
  'keep_checkpoints',  # What is saved, not what is trained.
  'eval.batch_size',  # Memory of the evaluation; each image is predicted alone.
  'nonfinite',  # stop/skip a diverged step; results.json counts skips.
  'data_dir',  # Where TFDS data is read; split.json is compared instead.
  'init_from.workdir',  # Read only when a run starts fresh; a stage's follows
  # --workdir, so it moves with it.
  'simclrv2.teacher.workdir',  # The same for a frozen teacher (methods/frozen_teacher.py).
  's4l.teacher.workdir',
  'finished_workdir',  # Where a finished stage is read; runs made before it have no such key.
  'profile_steps',  # What is traced, not what is trained.
)


def flatten(tree: Any, separator: str = '.', *, pytree: bool = False, skip=()) -> dict[str, Any]:
  """{'a.b.c': leaf}: the keys on the way to each leaf joined by `separator`, those in `skip`
  left out. Only dicts are entered (lists, None and empty dicts are leaves, as config values
  are), or with `pytree` every JAX pytree node (dataclasses, sequences, NNX variables; None and
  empty nodes hold no leaf). One flattener for config keys and train-state paths."""
  is_leaf = None if pytree else (lambda x: not isinstance(x, dict) or not x)
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]:
    names = (jax.tree_util.keystr((key,), simple=True) for key in path)
    flat[separator.join(name for name in names if name not in skip)] = leaf
  return flat


# The keys that are None unless a config sets them; `--config.KEY=None` unsets them again.
OPTIONAL_KEYS = tuple(
  key for key, value in flatten(get_base_config().to_dict()).items() if value is None
)


def changed_keys(
  saved: dict, current: dict, ignore=RESUME_MAY_CHANGE, defaults: dict | None = None
) -> list[str]:
  """Sorted dotted keys whose values differ between two JSON-normalised configs (as
  `json.loads(config.to_json_best_effort())` gives them), or that only one of them has.

  A key in `ignore`, or below one, never counts; nor does a key of `defaults` (a config like
  them, e.g. `get_base_config`'s) that only `current` has, at its value there: a key added to
  the code since `saved` was written, whose default is the behaviour `saved` had.
  """
  saved, current = flatten(saved), flatten(current)
  defaults = flatten(defaults or {})
  saved = {**{key: defaults[key] for key in current.keys() & defaults.keys()}, **saved}
  ignored = lambda key: any(key == i or key.startswith(i + '.') for i in ignore)

  def same(key):
    if key not in saved or key not in current:
      return False
    a, b = saved[key], current[key]  # json.dumps too: NaN == NaN.
    return a == b or json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

  return sorted(key for key in set(saved) | set(current) if not ignored(key) and not same(key))


def describe_changes(saved: dict, current: dict, keys: list[str], limit: int = 3) -> str:
  """'seed was 0, now 1; ...' for the first `limit` of `keys` (from `changed_keys`)."""
  saved, current = flatten(saved), flatten(current)

  def show(flat, key):
    if key not in flat:
      return 'absent'
    text = json.dumps(flat[key])
    return text if len(text) <= 40 else text[:37] + '...'

  parts = [f'{key} was {show(saved, key)}, now {show(current, key)}' for key in keys[:limit]]
  more = f' (and {len(keys) - limit} more)' if len(keys) > limit else ''
  return '; '.join(parts) + more


EPOCH_STREAMS = ('unlabelled', 'labelled')
# Learning rate of a base rate at a global batch of B images (`optimizer.lr_scaling`).
LR_SCALING = {
  'none': lambda base, batch: base,
  'linear': lambda base, batch: base * batch / 256,
  'sqrt': lambda base, batch: base * math.sqrt(batch),
}


def epoch_pairs(config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
  """[(dotted `X_steps` key, its `X_epochs` twin)] of `config`: e.g. ('num_steps', 'num_epochs'),
  ('optimizer.warmup_steps', 'optimizer.warmup_epochs')."""
  keys = flatten(config.to_dict())
  twins = [(key[: -len('_epochs')] + '_steps', key) for key in keys if key.endswith('_epochs')]
  return [(steps, epochs) for steps, epochs in twins if steps in keys]


def epoch_batch_size(config: ml_collections.ConfigDict) -> int:
  """The global batch of the epoch stream: what an epoch is counted in and the lr scaled by."""
  return config.batch_size if config.epoch_stream == 'unlabelled' else config.labelled_batch_size


def check_resolvable(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError unless `resolve` can run: one of each steps/epochs pair, a known epoch
  stream and scaling rule, lengths > 0 and warm-ups >= 0."""
  require(
    config.epoch_stream in EPOCH_STREAMS,
    f"config.epoch_stream='{config.epoch_stream}' is unknown; use unlabelled or labelled.",
  )
  require(
    config.optimizer.lr_scaling in LR_SCALING,
    f"config.optimizer.lr_scaling='{config.optimizer.lr_scaling}' is unknown; use "
    f'{", ".join(LR_SCALING)}.',
  )
  for steps, epochs in epoch_pairs(config):
    given = [key for key in (steps, epochs) if config[key] is not None]
    require(
      len(given) == 1,
      f'config.{steps}={config[steps]} and config.{epochs}={config[epochs]} are both set: give '
      'one (on the command line, giving one unsets the other of the config file).'
      if len(given) == 2
      else f'config.{steps} and config.{epochs} are both unset; give one, e.g. --config.{steps}=1.',
    )
    key, value = given[0], config[given[0]]
    accepts, rule = {
      'num_steps': (lambda v: isinstance(v, int) and v > 0, 'an integer > 0'),
      'num_epochs': (lambda v: v > 0, 'a number > 0'),
    }.get(key, _NON_NEGATIVE if key == epochs else _COUNT)
    example = flatten(get_base_config().to_dict()).get(key)
    example = example if example is not None else int(key in ('num_steps', 'num_epochs'))
    require(
      isinstance(value, (int, float)) and math.isfinite(value) and accepts(value),
      f'config.{key}={value!r} must be {rule}; e.g. --config.{key}={example}.',
    )


def resolution(config: ml_collections.ConfigDict, num_examples: dict[str, int]) -> dict:
  """What `resolve` sets, and from what, for the log and the records of a run.

  Returns {'epoch_stream', 'examples_per_epoch', 'batch_size' (of the epoch stream),
  'steps_per_epoch' (examples // batch, at least 1: whole batches, as a PyTorch loader with
  drop_last), 'learning_rate' (the peak, scaled), and each dotted `X_steps` key given as
  `X_epochs` (round(epochs x steps_per_epoch))}.
  """
  check_resolvable(config)
  batch = epoch_batch_size(config)
  examples = num_examples[config.epoch_stream]
  per_epoch = max(1, examples // batch)
  values = dict(
    epoch_stream=config.epoch_stream,
    examples_per_epoch=examples,
    batch_size=batch,
    steps_per_epoch=per_epoch,
    learning_rate=LR_SCALING[config.optimizer.lr_scaling](config.optimizer.learning_rate, batch),
  )
  for steps, epochs in epoch_pairs(config):
    if config[epochs] is not None:
      values[steps] = max(int(steps == 'num_steps'), round(config[epochs] * per_epoch))
  return values


def resolve(config: ml_collections.ConfigDict, num_examples: dict[str, int]):
  """`config` in steps and at its peak learning rate, as a run trains it (a copy).

  Args:
    config: a config that may give lengths in epochs and a base learning rate with a rule.
    num_examples: images of each epoch stream, e.g. {'unlabelled': 1281167, 'labelled': 128116}.

  Returns:
    A config with every `X_epochs` unset and its `X_steps` set (`resolution`), and
    `optimizer.learning_rate` the scaled rate with `lr_scaling='none'`: resolving it again
    gives it back.
  """
  values = resolution(config, num_examples)
  resolved = config.copy_and_resolve_references()
  for steps, epochs in epoch_pairs(config):
    *path, steps_name = steps.split('.')
    *_, epochs_name = epochs.split('.')
    section = functools.reduce(lambda node, key: node[key], path, resolved)
    section[steps_name] = values.get(steps, config[steps])
    section[epochs_name] = None
  resolved.optimizer.learning_rate = values['learning_rate']
  resolved.optimizer.lr_scaling = 'none'
  return resolved


# The numbers `validate` checks: key -> (accepts(value), what the value must be). A value that
# fails is refused naming its key, and its default in `get_base_config` as an example.
_COUNT = (lambda v: isinstance(v, int) and v >= 0, 'an integer >= 0')
_NON_NEGATIVE = (lambda v: v >= 0, 'a finite number >= 0')
_POSITIVE = (lambda v: v > 0, 'a finite number > 0')
_DECAY = (lambda v: 0 <= v < 1, 'a number in [0, 1)')  # Momentum, Adam's b1 and b2.
_NUMBER_RULES = {
  'seed': _COUNT,
  'optimizer.learning_rate': _NON_NEGATIVE,
  'optimizer.warmup_steps': _COUNT,
  'optimizer.end_learning_rate_factor': _NON_NEGATIVE,
  'optimizer.decay_factor': _POSITIVE,
  'optimizer.momentum': _DECAY,
  'optimizer.weight_decay': _NON_NEGATIVE,
  'optimizer.b1': _DECAY,
  'optimizer.b2': _DECAY,
  'optimizer.trust_coefficient': _POSITIVE,  # 0: LARS never updates a weight.
  'optimizer.grad_clip_norm': _NON_NEGATIVE,  # 0: off.
  'eval.knn_temperature': _POSITIVE,
}


def check_decay_boundaries(
  optimizer: ml_collections.ConfigDict, length: float, warmup: float | None
) -> None:
  """Raises ValueError unless `optimizer.decay_boundaries` are fractions of the run in (0, 1),
  increasing, and each after the warm-up: boundary x `length` > `warmup`, the run's length and
  warm-up in one unit (steps or epochs; None: the warm-up cannot be compared yet)."""
  boundaries = optimizer.decay_boundaries
  key = 'config.optimizer.decay_boundaries'
  require(
    isinstance(boundaries, (tuple, list))
    and all(isinstance(b, (int, float)) and 0 < b < 1 for b in boundaries),
    f'{key}={boundaries!r} must be fractions of the run in (0, 1), e.g. '
    f'"(0.7, 0.8, 0.9)" for epochs 140, 160, 180 of 200.',
  )
  require(
    list(boundaries) == sorted(set(boundaries)),
    f'{key}={tuple(boundaries)} must increase strictly, e.g. {tuple(sorted(set(boundaries)))}.',
  )
  if warmup is not None:
    early = tuple(b for b in boundaries if b * length <= warmup)
    require(
      not early,
      f'{key}: {early} of the run ({length:g}) is not after the warm-up ({warmup:g}): move the '
      'boundaries later or shorten the warm-up.',
    )


def closest_key(key: str, candidates) -> str:
  """`did you mean 'x'?` suffix for an unknown key, or ''."""
  match = difflib.get_close_matches(key, list(candidates), n=1)
  return f" (did you mean '{match[0]}'?)" if match else ''


def check_batches(config: ml_collections.ConfigDict, names: tuple[str, ...], num_devices: int):
  """Each batch size named (`batch_size`, `labelled_batch_size`, `eval.batch_size`: positive
  integers) splits evenly over the devices, and the training batches among them into
  `config.accumulate_steps` equal micro-batches on every device."""
  steps = config.accumulate_steps
  require(
    isinstance(steps, int) and steps > 0,
    f'config.accumulate_steps={steps!r} must be a positive integer (1: no accumulation).',
  )
  for name in names:
    value = config.eval.batch_size if name == 'eval.batch_size' else config[name]
    require(
      value % num_devices == 0,
      f'config.{name}={value} is not divisible by the {num_devices} devices: '
      f'set it to a multiple of {num_devices}, e.g. '
      f'--config.{name}={value - value % num_devices or num_devices}.',
    )
    if name == 'eval.batch_size':
      continue
    per_device = value // num_devices
    divisors = [d for d in range(1, per_device + 1) if per_device % d == 0]
    require(
      per_device % steps == 0,
      f'config.accumulate_steps={steps} does not divide the {per_device} images per device of '
      f'config.{name}={value} ({num_devices} devices), so its micro-batches cannot be '
      f'equal on every device: use one of {divisors} for accumulate_steps, or a multiple of '
      f'{steps * num_devices} for {name}.',
    )


def validate(config: ml_collections.ConfigDict, *, num_devices: int, workdir: str | None) -> None:
  """Raises ValueError naming the key and the fix for a config that cannot run.

  Cheap (no images read, nothing compiled), so that every stage of a plan is checked before
  the first one starts: data, shapes, batch sizes against `num_devices`, and the method's and
  model's own hyperparameters (the method is built on an abstract mesh, its model abstractly).
  """
  # Imported here: they import jax, which the command line's --help does not need.
  from flax import nnx
  from jax.sharding import AbstractMesh

  from semi_ssl import methods, parallel
  from semi_ssl.data import augment, datasets
  from semi_ssl.methods import base

  require(
    config.method in methods.REGISTRY,
    f"config.method='{config.method}' is unknown{closest_key(config.method, methods.REGISTRY)}; "
    f'valid methods: {", ".join(sorted(methods.REGISTRY))}.',
  )
  datasets.check_config(config)
  shape = datasets.image_shape(config)
  augment.augment_config_from(config, (0.0,) * shape[-1], (1.0,) * shape[-1], shape)
  for name, value in (
    ('batch_size', config.batch_size),
    ('labelled_batch_size', config.labelled_batch_size),
    ('eval.batch_size', config.eval.batch_size),
  ):
    require(
      isinstance(value, int) and value > 0, f'config.{name}={value!r} must be a positive integer.'
    )
  check_resolvable(config)
  opt = config.optimizer
  require(
    opt.schedule in ('cosine', 'piecewise'),
    f"config.optimizer.schedule='{opt.schedule}' is unknown; use cosine or piecewise.",
  )
  if opt.schedule == 'piecewise':  # Length and warm-up compared when given in one unit.
    in_steps = config.num_steps is not None
    warmup = opt.warmup_steps if in_steps else opt.warmup_epochs
    check_decay_boundaries(opt, config.num_steps if in_steps else config.num_epochs, warmup)
  steps = tuple(config.profile_steps)
  require(
    steps == ()
    or (len(steps) == 2 and all(isinstance(s, int) for s in steps) and 0 < steps[0] <= steps[1]),
    f'config.profile_steps={steps!r} must be () or (START, STOP) with 1 <= START <= STOP, '
    'e.g. --config.profile_steps="(10, 15)".',
  )
  decay = config.polyak_decay
  require(
    decay is None or (isinstance(decay, (int, float)) and _DECAY[0](decay)),
    f'config.polyak_decay={config.polyak_decay!r} must be {_DECAY[1]} (None or 0: off), '
    'e.g. 0.999.',
  )
  # Lengths in epochs need the data's size, known when the run loads it: checked here at a
  # stand-in of one step per epoch.
  config = resolve(config, dict.fromkeys(EPOCH_STREAMS, 1))
  require(
    isinstance(config.mesh.model, int)
    and config.mesh.model > 0
    and num_devices % config.mesh.model == 0,
    f'config.mesh.model={config.mesh.model} does not divide the {num_devices} devices: use '
    'a divisor of the device count (1: no parameter sharding).',
  )
  for key in ('num_steps', 'eval_every', 'checkpoint_every', 'log_every', 'keep_checkpoints'):
    require(config[key] > 0, f'config.{key}={config[key]} must be positive.')
  defaults = get_base_config()
  for key, (accepts, rule) in _NUMBER_RULES.items():
    value = config[key]
    require(
      isinstance(value, (int, float)) and math.isfinite(value) and accepts(value),
      f'config.{key}={value!r} must be {rule}; e.g. --config.{key}={defaults[key]}.',
    )
  require(
    0 < config.eval.crop_fraction <= 1,
    f'config.eval.crop_fraction={config.eval.crop_fraction} must be in (0, 1] (1: no crop).',
  )
  require(
    isinstance(config.eval.knn_k, int) and config.eval.knn_k > 0,
    f'config.eval.knn_k={config.eval.knn_k!r} must be a positive integer.',
  )
  require(
    config.optimizer.name in ('sgd', 'lars', 'adamw'),
    f"config.optimizer.name='{config.optimizer.name}' is unknown; use sgd, lars or adamw.",
  )
  require(
    config.nonfinite in ('stop', 'skip'),
    f"config.nonfinite='{config.nonfinite}' is unknown; use stop or skip.",
  )
  require(
    config.model.dtype in ('float32', 'bfloat16'),
    f"config.model.dtype='{config.model.dtype}' is unknown; use float32 or bfloat16.",
  )
  init = config.init_from
  require(
    not (init.workdir and init.stage), 'config.init_from: set either workdir or stage, not both.'
  )
  require(
    bool(init.workdir or init.stage) == bool(init.paths),
    'config.init_from: name both a source (workdir or stage) and the parameter paths to copy, '
    'e.g. --config.init_from.paths="(\'backbone\',)".',
  )
  mesh = AbstractMesh(
    (num_devices // config.mesh.model, config.mesh.model), (parallel.DATA_AXIS, parallel.MODEL_AXIS)
  )
  data = base.DataInfo(num_classes=datasets.num_classes(config), image_shape=shape)
  method = methods.REGISTRY[config.method](config, data, mesh)
  nnx.eval_shape(lambda: method.create_model(nnx.Rngs(0)))
  # The unlabelled batch only where the method reads it (the supervised baseline does not).
  unlabelled = ('batch_size',) if method.uses_unlabelled else ()
  check_batches(config, ('labelled_batch_size', *unlabelled, 'eval.batch_size'), num_devices)
  if workdir is not None:
    _check_writable(workdir)


def _check_writable(workdir: str) -> None:
  if '://' in workdir:  # Remote file systems (gs://) are checked by the first write.
    return
  existing = workdir
  while not os.path.exists(existing):
    existing = os.path.dirname(os.path.abspath(existing))
  require(
    os.path.isdir(existing) and os.access(existing, os.W_OK),
    f"--workdir={workdir} is not writable ('{existing}' does not allow writing): "
    'choose another directory.',
  )


def check_bucket(workdir: str) -> None:
  """Raises ValueError unless the bucket of a URL workdir (gs://BUCKET/...) exists and can be
  reached; a local workdir passes.

  epath's gs:// backends (tf.io.gfile, fsspec) answer False for a missing bucket; one that
  raises its not-found error (tf.errors.NotFoundError, google.api_core.exceptions.NotFound, as
  Orbax's google-cloud-storage client later would) is taken as the same answer.
  """
  if '://' not in workdir:
    return
  from etils import epath
  from semi_ssl.checkpoint import short_reason

  scheme, _, rest = workdir.partition('://')
  bucket = f'{scheme}://{rest.split("/")[0]}'
  try:
    exists = epath.Path(bucket).exists()
  except Exception as error:  # pylint: disable=broad-except
    if not (isinstance(error, FileNotFoundError) or type(error).__name__.startswith('NotFound')):
      raise ValueError(
        f'--workdir={workdir}: cannot reach {bucket} ({short_reason(error)}): check '
        'the credentials and the network, or choose another --workdir.'
      ) from error
    exists = False
  require(
    exists,
    f'--workdir={workdir}: the bucket {bucket} does not exist: create it (gcloud '
    f'storage buckets create {bucket}) or choose another --workdir.',
  )


class ConfigFileError(ValueError):
  """A config file that cannot give a config; the message is one line naming the file."""


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file, as `--config=path[:arg]` would load it.

  Raises:
    ConfigFileError: the file does not exist, has no `get_config`, its `get_config` does not
      take `arg`, or loading it raises (a syntax error too): one line with the file, the line
      and the message.
  """
  import importlib.util
  import inspect
  import traceback

  if not os.path.isfile(path):
    raise ConfigFileError(f'{path}: no such config file (e.g. configs/suave/digits.py).')
  args = () if arg is None else (arg,)
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    get_config = getattr(module, 'get_config', None)
    if not callable(get_config):
      raise ConfigFileError(f'{path} has no get_config(): define one that returns the config.')
    try:
      inspect.signature(get_config).bind(*args)
    except TypeError:
      raise ConfigFileError(
        f'{path}:{arg}: its get_config() takes no argument; use --config={path}.'
        if args
        else f'{path}: its get_config() needs an argument; use --config={path}:ARG.'
      ) from None
    return get_config(*args)
  except ConfigFileError:
    raise
  except SyntaxError as error:
    raise ConfigFileError(
      f'File "{error.filename}", line {error.lineno}: {type(error).__name__}: {error.msg}'
    ) from None
  except Exception as error:  # pylint: disable=broad-except
    here = os.path.abspath(path)
    lines = [
      f', line {frame.lineno}'
      for frame in traceback.extract_tb(error.__traceback__)
      if os.path.abspath(frame.filename) == here
    ]  # Its innermost line in the file.
    message = ' '.join(str(error).split())
    raise ConfigFileError(
      f'File "{path}"{lines[-1] if lines else ""}: {type(error).__name__}: {message}'
    ) from None


# The keys that choose the images, the split and the labelled subset.
DATA_KEYS = (
  'seed',
  'dataset',
  'data_file',
  'data_dir',
  'decode_size',
  'labels_per_class',
  'label_fraction',
  'val_size',
)


def single_labelled_crop(
  augment: ml_collections.ConfigDict,
  *,
  family: str,
  color_jitter: tuple[float, float, float, float],
  grayscale_prob: float,
  scale: tuple[float, float] = (0.08, 1.0),
  flip: bool = True,
) -> ml_collections.ConfigDict:
  """`config.augment.labelled` of one random-resized crop of `scale` of the area at the global
  crops' size (a reference: it follows `augment.global_size`), flipped or not, with the given
  augmentation family, colour jitter ranges and grayscale probability, no blur or solarize:
  the labelled views of the official Suave and Daino code (the configs cite the lines)."""
  return ml_collections.ConfigDict(
    dict(
      family=family,
      num_crops=1,
      size=augment.get_ref('global_size'),
      scale=scale,
      flip=flip,
      color_jitter=color_jitter,
      grayscale_prob=grayscale_prob,
      blur_prob=0.0,
      solarize_prob=0.0,
    )
  )


def with_baseline(
  config: ml_collections.ConfigDict, baseline: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
  """`config` preceded by a `baseline` stage on the same labelled images, for one table.

  The method's stage follows every top-level key, so command-line overrides change it as
  usual; the baseline takes the data keys (`seed`, `dataset`, `data_file`, `data_dir`,
  `decode_size`, `labels_per_class`, `label_fraction`, `val_size`) from the top level, so
  `--config.seed=3` or `--config.dataset=npz --config.data_file=F` changes both runs.
  """
  method_stage = ml_collections.ConfigDict()
  for key in config.keys():
    if key not in ('stages', 'name'):
      method_stage[key] = config.get_ref(key)
  method_stage.name = config.method
  baseline.name = baseline.method
  for key in DATA_KEYS:
    baseline[key] = config.get_ref(key)
  config.stages = (baseline, method_stage)
  return config


def derived_stage(
  parent: ml_collections.ConfigDict, name: str, *, skip: tuple[str, ...] = (), **changes
) -> ml_collections.ConfigDict:
  """A stage named `name` that is `parent` but for `changes`, for `config.stages`.

  Every other key of `parent` (but `stages`, `name` and `skip`) follows `parent`'s value, so
  command-line overrides of `parent` reach the stage, while an override of the stage's key
  (`--config.<name>.KEY=`) changes that stage alone. A change is a value, or for a section a
  dict of the keys it changes (its other keys follow `parent`'s section). A stage that gives a
  length or warm-up in steps or epochs owns both keys of the pair (`num_steps` and
  `num_epochs`, ...): the other one stays unset whatever `parent` sets.
  """
  stage = _follow(parent, changes, skip=('stages', 'name', *skip))
  stage.name = name
  return stage


def _oneway_ref(section: ml_collections.ConfigDict, key: str):
  """`section.get_oneway_ref(key)`, or None for a plain None (no reference can be made to it:
  the stage gets its own None; a placeholder, typed, is followed like any value)."""
  try:
    return section.get_oneway_ref(key)
  except ValueError:
    return None


def _follow(
  section: ml_collections.ConfigDict, changes: dict, skip=()
) -> ml_collections.ConfigDict:
  unknown = sorted(set(changes) - set(section.keys()))
  require(not unknown, f'derived_stage: {unknown} are not keys of the config it derives from.')
  own = dict(changes)
  for key in changes:
    for unit, twin, kind in (('_epochs', '_steps', int), ('_steps', '_epochs', float)):
      other = key[: -len(unit)] + twin
      if key.endswith(unit) and other in section and other not in changes:
        own[other] = config_dict.placeholder(kind)
  followed = ml_collections.ConfigDict()
  for key in section.keys():
    value = section[key]
    if key in skip:
      continue
    if isinstance(value, ml_collections.ConfigDict) and isinstance(own.get(key, {}), dict):
      followed[key] = _follow(value, own.get(key, {}))
    elif key in own:
      followed[key] = own[key]
    else:
      # It follows `section`'s value until the stage's own key is set, which then changes this
      # stage alone (a plain reference would change `section` and every stage with it).
      followed[key] = _oneway_ref(section, key)
  return followed


def frozen_teacher(model: ml_collections.ConfigDict) -> dict:
  """The `teacher` section of a method with a frozen teacher (methods/frozen_teacher.py):
  a run's `workdir` or this run's `stage` (one of them set later), and its model, which
  follows `model` (references: `--config.model.width=2` reaches the teacher)."""
  return dict(
    workdir=config_dict.placeholder(str),
    stage=config_dict.placeholder(str),
    model={key: model.get_ref(key) for key in ('backbone', 'width', 'stem', 'dtype')},
  )


def chained_stages(
  config: ml_collections.ConfigDict, first: str, *later: tuple[str, dict]
) -> ml_collections.ConfigDict:
  """`config` as the first of its `stages`, named `first`, then for each (name, changes) of
  `later` the `derived_stage` of `config` with those changes, also kept as `config.<name>` (so
  that `--config.<name>.KEY=...` overrides reach it alone). Every later stage leaves
  `finished_workdir` unset, so that it names a finished first stage only."""
  names = tuple(name for name, _ in later)
  for name, changes in later:
    earlier = names[: names.index(name)]
    config[name] = derived_stage(config, name, skip=earlier, finished_workdir=None, **changes)
  config.stages = (derived_stage(config, first, skip=names), *(config[name] for name in names))
  return config


def simclrv2_stages(
  config: ml_collections.ConfigDict, *, finetune: dict, distill: dict
) -> ml_collections.ConfigDict:
  """`config` (SimCLRv2's pretraining) with `config.finetune`, `config.distill` and the
  three `stages` pretrain -> finetune -> distill (`chained_stages`). finetune: the backbone
  and projection head from pretrain (`init_from`), `simclrv2.stage='finetune'`, and the
  `derived_stage` changes `finetune`; distill: the finetune stage as frozen teacher and the
  changes `distill`. Neither has a memory of negatives (`simclrv2.memory_size`: pretraining's)."""
  return chained_stages(
    config,
    'pretrain',
    (
      'finetune',
      _merged(
        finetune,
        simclrv2=dict(stage='finetune', memory_size=0),
        init_from=_init_from('pretrain', ('backbone', 'projector')),
      ),
    ),
    (
      'distill',
      _merged(
        distill, simclrv2=dict(stage='distill', memory_size=0, teacher=dict(stage='finetune'))
      ),
    ),
  )


def s4l_moam_stages(
  config: ml_collections.ConfigDict, *, retrain: dict, finetune: dict
) -> ml_collections.ConfigDict:
  """`config` (S4L MOAM's joint stage) with `config.retrain`, `config.finetune` and the three
  `stages` joint -> retrain -> finetune (`chained_stages`). retrain: `s4l.stage='retrain'`, a
  model from scratch, the joint stage as frozen teacher, and the `derived_stage` changes
  `retrain`; finetune: the backbone and classifier from retrain (`init_from`) and the changes
  `finetune`."""
  return chained_stages(
    config,
    'joint',
    ('retrain', _merged(retrain, s4l=dict(stage='retrain', teacher=dict(stage='joint')))),
    (
      'finetune',
      _merged(
        finetune,
        s4l=dict(stage='finetune'),
        init_from=_init_from('retrain', ('backbone', 'classifier')),
      ),
    ),
  )


def _merged(changes: dict, **own) -> dict:
  """`changes` and `own` together, a section's dict in both merged key by key."""
  return {**changes, **{key: {**changes.get(key, {}), **value} for key, value in own.items()}}


def _init_from(stage: str, paths: tuple[str, ...]) -> ml_collections.ConfigDict:
  """An `init_from` section that reads `paths` from this run's earlier `stage`."""
  return ml_collections.ConfigDict(
    dict(workdir=config_dict.placeholder(str), stage=stage, paths=paths)
  )
