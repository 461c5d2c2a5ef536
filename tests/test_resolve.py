"""Lengths in epochs and batch-relative learning rates, resolved when a run starts
(`config_base.resolve`): on the shipped ImageNet configs, and the one-line errors. Pure: no data."""

import os

import pytest

from semi_ssl import config_base, main
from helpers import REPO

IMAGENET_TRAIN = 1_281_167
LABELLED_10PCT = 128_116  # TFDS imagenet2012_subset/10pct.
NUM_EXAMPLES = dict(unlabelled=IMAGENET_TRAIN, labelled=LABELLED_10PCT)


def stages(path: str, **overrides) -> list:
  """The stages of a config file, with top-level `overrides`, as main plans them."""
  config = config_base.load_config_file(os.path.join(REPO, path))
  config.update(overrides)
  return [stage for stage, _ in main.stage_plan(config, '/workdir')]


# Each ImageNet config, and the batch key of its epoch stream.
IMAGENET = [
  ('configs/suave/imagenet_10pct.py', 'batch_size'),
  ('configs/semppl/imagenet_10pct.py', 'batch_size'),
  ('configs/daino/imagenet_10pct.py', 'batch_size'),
  ('configs/supervised/imagenet_10pct.py', 'labelled_batch_size'),
]


@pytest.mark.parametrize('path, batch_key', IMAGENET)
def test_halved_batch_keeps_the_epochs_and_scales_the_learning_rate_by_its_rule(path, batch_key):
  default = stages(path)
  batch = default[0][batch_key]
  halved = stages(path, **{batch_key: batch // 2})
  for given, small in zip(default, halved):
    full = config_base.resolve(given, NUM_EXAMPLES)
    half = config_base.resolve(small, NUM_EXAMPLES)
    examples = NUM_EXAMPLES[given.epoch_stream]
    assert config_base.epoch_batch_size(given) == batch
    for resolved, per_step in ((full, batch), (half, batch // 2)):
      epochs = resolved.num_steps / (examples // per_step)
      assert epochs == pytest.approx(given.num_epochs, abs=0.5 / (examples // per_step))
    assert full.num_steps < half.num_steps <= 2 * full.num_steps + given.num_epochs
    assert half.optimizer.warmup_steps == round(
      given.optimizer.warmup_epochs * (examples // (batch // 2))
    )
    assert given.optimizer.lr_scaling == 'linear'
    assert half.optimizer.learning_rate == pytest.approx(full.optimizer.learning_rate / 2)
    assert full.optimizer.learning_rate == pytest.approx(
      given.optimizer.learning_rate * batch / 256
    )
    assert (full.num_epochs, full.optimizer.warmup_epochs, full.optimizer.lr_scaling) == (
      None,
      None,
      'none',
    )


def test_the_imagenet_configs_keep_their_lengths_and_learning_rates():
  """The numbers the configs had in steps at their default batch (ImageNet train = 1,281,167)."""
  expected = {  # (num_steps, peak lr, warm-up steps) of each stage.
    'configs/suave/imagenet_10pct.py': [(100 * 5004, 0.4, 5 * 5004), (5 * 5004, 0.03, 0)],
    'configs/semppl/imagenet_10pct.py': [(300 * 312, 0.3 * 4096 / 256, 10 * 312)],
    'configs/daino/imagenet_10pct.py': [(60 * 1251, 0.4 * 1024 / 256, 5 * 1251)],
    'configs/supervised/imagenet_10pct.py': [(200 * 500, 0.1, 5 * 500)],
  }
  for path, values in expected.items():
    resolved = [config_base.resolve(stage, NUM_EXAMPLES) for stage in stages(path)]
    got = [
      (r.num_steps, pytest.approx(r.optimizer.learning_rate), r.optimizer.warmup_steps)
      for r in resolved
    ]
    assert got == values, path
  daino = config_base.resolve(stages('configs/daino/imagenet_10pct.py')[0], NUM_EXAMPLES)
  assert daino.daino.teacher_temperature_warmup_steps == 10 * 1251  # [D] 10 epochs.
  assert daino.daino.teacher_temperature_update_steps == 1251  # [D] Once an epoch.


def test_sqrt_scaling_is_simclr_v2s_and_resolving_twice_changes_nothing():
  config = config_base.get_base_config()
  config.optimizer.update(learning_rate=0.1, lr_scaling='sqrt')
  config.batch_size = 4096
  resolved = config_base.resolve(config, NUM_EXAMPLES)
  assert resolved.optimizer.learning_rate == pytest.approx(6.4)  # 0.1 x sqrt(4096).
  config.batch_size = 1024
  assert config_base.resolve(config, NUM_EXAMPLES).optimizer.learning_rate == pytest.approx(3.2)
  assert config_base.resolve(resolved, NUM_EXAMPLES) == resolved
  # 'none' keeps the rate; the length in steps is kept as given.
  config.optimizer.lr_scaling = 'none'
  assert config_base.resolve(config, NUM_EXAMPLES).optimizer.learning_rate == 0.1
  assert config_base.resolve(config, NUM_EXAMPLES).num_steps == config.num_steps


def test_resolution_records_what_it_resolved_from():
  config = config_base.get_base_config()
  config.update(num_steps=None, num_epochs=2.5, epoch_stream='labelled', labelled_batch_size=100)
  config.optimizer.update(learning_rate=0.2, lr_scaling='linear', warmup_steps=None)
  config.optimizer.warmup_epochs = 0.5
  assert config_base.resolution(config, dict(unlabelled=10, labelled=1050)) == {
    'epoch_stream': 'labelled',
    'examples_per_epoch': 1050,
    'batch_size': 100,
    'steps_per_epoch': 10,  # Whole batches only.
    'learning_rate': pytest.approx(0.2 * 100 / 256),
    'num_steps': 25,
    'optimizer.warmup_steps': 5,
  }
  # Fewer images than a batch: an epoch is one step.
  assert config_base.resolution(config, dict(unlabelled=10, labelled=30))['num_steps'] == 2


@pytest.mark.parametrize(
  'changes, message',
  [
    (
      dict(num_epochs=3.0),
      r'^config.num_steps=1000 and config.num_epochs=3.0 are both set: give one \(on the command '
      r'line, giving one unsets the other of the config file\).$',
    ),
    (
      dict(num_steps=None),
      r'^config.num_steps and config.num_epochs are both unset; give one, e.g. '
      r'--config.num_steps=1.$',
    ),
    (
      dict(num_steps=None, num_epochs=0.0),
      r'^config.num_epochs=0.0 must be a number > 0; e.g. --config.num_epochs=1.$',
    ),
    (
      {'optimizer.warmup_epochs': 1.0},
      r'^config.optimizer.warmup_steps=50 and config.optimizer.warmup_epochs=1.0 are both set',
    ),
    (dict(epoch_stream='test'), r"^config.epoch_stream='test' is unknown; use unlabelled or"),
    (
      {'optimizer.lr_scaling': 'square'},
      r"^config.optimizer.lr_scaling='square' is unknown; use none, linear, sqrt.$",
    ),
  ],
)
def test_bad_lengths_and_rules_are_one_line_before_anything_runs(changes, message):
  config = config_base.get_base_config()
  config.labels_per_class = 5
  config.update_from_flattened_dict(changes)
  with pytest.raises(ValueError, match=message):
    config_base.resolve(config, NUM_EXAMPLES)
  with pytest.raises(ValueError, match=message):  # main validates every stage before a start.
    config_base.validate(config, num_devices=8, workdir=None)


def test_a_length_on_the_command_line_unsets_the_config_files_other_unit():
  """main.parse_flags: `--config.num_steps=10` on a config in epochs, as for the labelled keys."""
  config = config_base.load_config_file(os.path.join(REPO, 'configs/semppl/imagenet_10pct.py'))
  config.num_steps, config.optimizer.warmup_steps = 10, 2  # As the overrides set them.
  notes = main._unset_other_labelled_key(config, {'num_steps': '10', 'optimizer.warmup_steps': '2'})
  assert notes == [
    '--config.num_steps=10 given: unsetting config.num_epochs=300.0 of the config file.',
    '--config.optimizer.warmup_steps=2 given: unsetting config.optimizer.warmup_epochs=10.0 of '
    'the config file.',
  ]
  resolved = config_base.resolve(config, NUM_EXAMPLES)
  assert (resolved.num_steps, resolved.optimizer.warmup_steps) == (10, 2)
  # A stage's own length: the top level's stays in epochs.
  config = config_base.load_config_file(os.path.join(REPO, 'configs/suave/imagenet_10pct.py'))
  config.finetune.num_steps = 7
  main._unset_other_labelled_key(config, {'finetune.num_steps': '7'})
  suave, finetune = [stage for stage, _ in main.stage_plan(config, '/workdir')]
  assert (suave.num_steps, suave.num_epochs) == (None, 100.0)
  assert (finetune.num_steps, finetune.num_epochs) == (7, None)
