"""The command line (`semi_ssl.main.parse_flags`), in process: a bad config file or override
stops with one line naming the file and line or the key; `--config.labels_per_class=None` and
`--config.label_fraction=F` work with the shipped configs, staged ones too."""

import sys

from absl import flags
import pytest

from semi_ssl import config_base, main
from semi_ssl.data import datasets

DIGITS = 'configs/suave/digits.py'


@pytest.fixture
def parse(monkeypatch):
  """parse(*args): the config `main.parse_flags` builds from `--config=...` and overrides."""

  def parse_(*args):
    argv = ['semi_ssl.main', '--workdir=unused', *args]
    monkeypatch.setattr(sys, 'argv', argv)  # ml_collections reads the overrides from sys.argv.
    main.parse_flags(argv)
    return flags.FLAGS.config

  yield parse_
  for name in [name for name in flags.FLAGS if name.startswith('config.')]:
    delattr(flags.FLAGS, name)  # Each override defines a flag; the next parse defines it again.
  flags.FLAGS.unparse_flags()


def config_error(parse, *args) -> str:
  """The one line `parse(*args)` exits with."""
  with pytest.raises(SystemExit) as stop:
    parse(*args)
  message = str(stop.value.code)
  assert message.startswith('Config error: ') and '\n' not in message, message
  return message


def write(tmp_path, name: str, text: str) -> str:
  path = tmp_path / name
  path.write_text(text)
  return str(path)


BROKEN_FILES = {  # name: (text, what the line says after 'Config error: ').
  'syntax.py': (
    'from semi_ssl import config_base\n\ndef get_config(:\n  pass\n',
    'File "{path}", line 3: SyntaxError: invalid syntax',
  ),
  'raises.py': (
    'from semi_ssl import config_base\n\ndef get_config():\n'
    '  c = config_base.get_base_config()\n  raise RuntimeError("no data here")\n',
    'File "{path}", line 5: RuntimeError: no data here',
  ),
  'raises_on_import.py': (
    'import os\nVALUE = {}["missing"]\n',
    'File "{path}", line 2: KeyError: \'missing\'',
  ),
  'no_get_config.py': ('CONFIG = {}\n', '{path} has no get_config(): define one'),
  'needs_argument.py': (
    'def get_config(arg):\n  return arg\n',
    '{path}: its get_config() needs an argument; use --config={path}:ARG.',
  ),
}


@pytest.mark.parametrize('name', sorted(BROKEN_FILES))
def test_broken_config_file_is_one_line_naming_file_and_line(parse, tmp_path, name):
  text, expected = BROKEN_FILES[name]
  path = write(tmp_path, name, text)
  assert config_error(parse, f'--config={path}').startswith(
    'Config error: ' + expected.format(path=path)
  )


def test_missing_config_file_is_one_line(parse, tmp_path):
  assert config_error(parse, f'--config={tmp_path}/nope.py', '--config.seed=1') == (
    f'Config error: {tmp_path}/nope.py: no such config file (e.g. configs/suave/digits.py).'
  )


def test_error_in_a_config_file_another_one_loads_names_the_inner_file(parse, tmp_path):
  inner = write(tmp_path, 'inner.py', 'def get_config():\n  return 1 / 0\n')
  outer = write(
    tmp_path,
    'outer.py',
    'from semi_ssl import config_base\n\ndef get_config():\n'
    f'  return config_base.load_config_file({inner!r})\n',
  )
  assert config_error(parse, f'--config={outer}') == (
    f'Config error: File "{inner}", line 2: ZeroDivisionError: division by zero'
  )


@pytest.mark.parametrize(
  'config, start, end',
  [
    (
      'configs/supervised/digits.py:x',
      'configs/supervised/digits.py:x: its get_config() takes',
      'no argument; use --config=configs/supervised/digits.py.',
    ),
    (
      f'{DIGITS}:nope',
      f'File "{DIGITS}", line ',
      ": ValueError: unknown argument ':nope': use ':with_baseline', ':official' or none.",
    ),
  ],
)
def test_config_argument_get_config_does_not_take_is_one_line(parse, config, start, end):
  message = config_error(parse, f'--config={config}')
  assert message.startswith(f'Config error: {start}') and message.endswith(end)


def test_wrong_type_in_config_file_names_its_line(parse, tmp_path):
  path = write(
    tmp_path,
    'bad.py',
    'from semi_ssl import config_base\n\ndef get_config():\n'
    '  c = config_base.get_base_config()\n  c.num_steps = "many"\n  return c\n',
  )
  message = config_error(parse, f'--config={path}')
  assert message.startswith(f'Config error: File "{path}", line 5: TypeError: ')
  assert "<class 'str'> and cannot be casted to type <class 'int'>" in message


@pytest.mark.parametrize(
  'overrides',
  [
    ['--config.label_fraction=0.1'],
    ['--config.labels_per_class=None', '--config.label_fraction=0.1'],
    [
      '--config.label_fraction=0.1',
      '--config.labels_per_class=7',
      '--config.labels_per_class=None',
    ],  # The last value counts.
  ],
)
def test_label_fraction_replaces_labels_per_class_in_every_stage(parse, overrides):
  config = parse(f'--config={DIGITS}:with_baseline', *overrides)
  stages = [stage for stage, _ in main.stage_plan(config, '/workdir')]
  assert [stage.name for stage in stages] == ['supervised', 'suave']
  for each in [config] + stages:
    assert (each.labels_per_class, each.label_fraction) == (None, 0.1)
    datasets.check_config(each)  # Exactly one of them is set.
  unset_by_fraction = [
    '--config.label_fraction=0.1 given: unsetting config.labels_per_class=5 of the config file.'
  ]
  assert main.PARSE_NOTES == (unset_by_fraction if len(overrides) == 1 else [])


def test_labels_per_class_replaces_label_fraction_of_the_config_file(parse):
  config = parse('--config=configs/supervised/imagenet_10pct.py', '--config.labels_per_class=13')
  assert (config.labels_per_class, config.label_fraction) == (13, None)
  assert main.PARSE_NOTES == [
    '--config.labels_per_class=13 given: unsetting config.label_fraction=0.1 of the config file.'
  ]


def test_none_unsets_optional_keys_only(parse):
  config = parse(
    f'--config={DIGITS}',
    '--config.data_dir=/data',
    '--config.data_dir=None',
    '--config.init_from.stage=None',
  )
  assert (config.data_dir, config.init_from.stage, config.labels_per_class) == (None, None, 5)
  assert 'data_dir' in config_base.OPTIONAL_KEYS and 'seed' not in config_base.OPTIONAL_KEYS
  with pytest.raises(SystemExit, match='--config.seed=None: invalid literal for int()'):
    parse(f'--config={DIGITS}', '--config.seed=None')


@pytest.mark.parametrize(
  'overrides, values',
  [
    (['--config.labels_per_class=3', '--config.label_fraction=0.1'], (3, 0.1)),
    (['--config.labels_per_class=None'], (None, None)),
  ],
)
def test_both_or_neither_labelled_key_says_how_to_set_one(parse, overrides, values):
  config = parse(f'--config={DIGITS}', *overrides)
  assert (config.labels_per_class, config.label_fraction) == values
  with pytest.raises(ValueError, match='set exactly one of them') as error:
    datasets.check_config(config)
  assert '--config.labels_per_class=None' in str(error.value)


@pytest.mark.parametrize('key', ['global_scale', 'local_scale', 'blur_prob', 'solarize_prob'])
def test_float_tuple_of_strings_names_its_key(parse, key):
  config = parse(f'--config={DIGITS}', f"--config.augment.{key}=('a', 'b')")
  with pytest.raises(ValueError) as error:
    config_base.validate(config, num_devices=1, workdir=None)
  assert str(error.value) == (
    f"config.augment.{key}=('a', 'b') must be a tuple of floats, e.g. "
    f'--config.augment.{key}="(0.5, 1.0)".'
  )


def test_float_tuple_of_strings_in_a_config_file_names_its_key(parse, tmp_path):
  path = write(
    tmp_path,
    'strings.py',
    'from semi_ssl import config_base\n\ndef get_config():\n'
    '  c = config_base.get_base_config()\n  c.labels_per_class = 5\n'
    "  c.augment.blur_prob = ('high',)\n  return c\n",
  )
  with pytest.raises(
    ValueError,
    match=r"config.augment.blur_prob=\('high',\) must be a tuple "
    'of floats',
  ):
    config_base.validate(parse(f'--config={path}'), num_devices=1, workdir=None)
