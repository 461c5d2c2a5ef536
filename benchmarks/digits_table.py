"""Digits results: runs of method x labels per class x seed, recorded in a committed JSON-lines
file that grows across sessions, and the README table generated from that file alone.

    # 5 seeds at 1 and 5 labels per class; runs already in the results file are skipped.
    python -m benchmarks.digits_table --methods=supervised,suave,daino,semppl \
        --labels_per_class=1,5 --seeds=0,1,2,3,4
    # An option, tagged in the record and the table (--set repeats; any config key).
    python -m benchmarks.digits_table --methods=suave --labels_per_class=5 \
        --set=suave.mixup_alpha=0 --tag=no_mixup
    # A config argument (configs/suave/digits.py:official), tagged likewise.
    python -m benchmarks.digits_table --methods=suave:official --labels_per_class=5 \
        --tag=official
    # Validation search: at most 6 settings (the product of the --grid lists) x 2 seeds,
    # ranked by mean val_top1; test figures are never shown.
    python -m benchmarks.digits_table --search --methods=suave --labels_per_class=5 \
        --grid=optimizer.learning_rate=0.05,0.1,0.2 --grid=suave.temperature=0.1,0.2
    # The README table (mean ± sample std over the seeds present, n, machine, commits);
    # with --readme=README.md written between its two digits_table marker lines instead.
    python -m benchmarks.digits_table --report [--readme=README.md]

Each run is the README's main command (`python -m semi_ssl.main
--config=configs/<method>/digits.py[:<arg>] --config.seed=S --config.labels_per_class=L
--config.<set>`) in ROOT/<method>_<config hash>_l<L>_s<S>; a finished run there is read back
from its results.json, an unfinished one resumed. Each finished run is appended to --record as
one line: method, config_arg, labels_per_class, seed, config_hash, tag, overrides, every `*_top1`
figure of results.json (test_top1, knn_top1, val_top1, val_knn_top1 ...), steps, wall_seconds,
skipped_steps, commit (`-dirty` when tracked files differ from it), machine and date; a staged
run (SimCLRv2) adds each stage's figures, steps and wall seconds under `stages`, its
wall_seconds is their sum, and the table has a line per stage (`simclrv2/pretrain`). A run is
skipped when the file has its (method, config hash, seed, labels per class). The config hash
is of the config the run parses, without the seed, the label count and the keys that change
nothing learned (`config_base.RESUME_MAY_CHANGE`: workdirs, logging, checkpoints): one hash
names a method's config at every label count. Lines without a config hash are the older
format (the runs of commit 9005869): an older config of its own, at 5 labels per class.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import itertools
import json
import os
import platform
import subprocess
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from semi_ssl import config_base, provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(REPO, 'benchmarks', 'results', 'digits.jsonl')
PROVENANCE_FILE = 'digits_table.json'  # In each workdir: the commit and machine that started it.
# Lines of the older format have no labels_per_class: every digits config of commit 9005869,
# where they were measured, set 5.
OLDER_FORMAT_LABELS_PER_CLASS = 5
HASH_IGNORES = ('seed', 'labels_per_class', *config_base.RESUME_MAY_CHANGE)
# Keys added to the base config after runs were recorded, whose defaults train as before the
# keys existed: left out of the hash at those values, so a recorded config keeps its hash.
HASH_IGNORES_AT_DEFAULT = (
  'optimizer.schedule',
  'optimizer.decay_boundaries',
  'optimizer.decay_factor',
  'polyak_decay',
  'model.remat',
  'accumulate_steps',
)
MAX_SEARCH_SETTINGS = 6

_METHODS = flags.DEFINE_list(
  'methods',
  ['supervised', 'suave', 'daino', 'semppl'],
  'Configs configs/<m>/digits.py; <m>:<arg> passes the config argument <arg>.',
)
_LABELS = flags.DEFINE_list('labels_per_class', ['1', '5'], 'Labelled images per class.')
_SEEDS = flags.DEFINE_list(
  'seeds', None, 'Labelled-split seeds (default: 0,1,2,3,4; with --search 0,1).'
)
_SET = flags.DEFINE_multi_string(
  'set', [], 'KEY=VALUE config override of every run, as --config.KEY=VALUE (repeatable).'
)
_TAG = flags.DEFINE_string('tag', '', 'Name of the option the overrides turn on, for the table.')
_SEARCH = flags.DEFINE_bool(
  'search', False, 'Validation search over the --grid settings, ranked by mean val_top1.'
)
_GRID = flags.DEFINE_multi_string(
  'grid', [], 'KEY=V1,V2,...: values searched for KEY; the settings are the product (repeatable).'
)
_REPORT = flags.DEFINE_bool('report', False, 'Print the README table from --record; run nothing.')
_README = flags.DEFINE_string(
  'readme', None, '--report: write the table into this file between its marker lines.'
)
_MIN_SEEDS = flags.DEFINE_integer(
  'min_seeds', 3, '--report: configs with fewer seeds (searches) are counted below the table.'
)
_ROOT = flags.DEFINE_string('root', '/tmp/digits_table', 'Parent of the workdirs.')
_RECORD = flags.DEFINE_string('record', RECORD, 'JSON-lines file of the finished runs.')


def machine() -> str:
  """The CPU model and the cores this process may use, e.g. 'AMD EPYC 7B13, 2 cores'."""
  try:
    with open('/proc/cpuinfo') as f:
      model = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    model = platform.processor() or platform.machine()
  return f'{model}, {len(os.sched_getaffinity(0))} cores'


def commit() -> str | None:
  """Short hash of HEAD, with '-dirty' when tracked files (but the results) differ from it."""
  return provenance.code_commit(REPO, short=True, ignore=('benchmarks/results',))


def parse_config(config_flags_: list[str]):
  """The config that `python -m semi_ssl.main` builds from these `--config...` flags."""
  argv = ['digits_table', *config_flags_]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


@functools.cache
def _values_left_out() -> dict:
  base = config_base.flatten(json.loads(config_base.get_base_config().to_json_best_effort()))
  return {**{key: base[key] for key in HASH_IGNORES_AT_DEFAULT}, **config_base.ADDED_METHOD_KEYS}


def _strip(tree, prefix: str = ''):
  """`tree` (a JSON config) without the keys of HASH_IGNORES, nor those below one, nor those of
  HASH_IGNORES_AT_DEFAULT at their defaults or of `config_base.ADDED_METHOD_KEYS` at their
  values; a list's dicts (stages) and the dicts with a `method` (a stage's section) are configs
  of their own."""
  if isinstance(tree, list):
    return [_strip(item) for item in tree]
  if not isinstance(tree, dict):
    return tree
  if 'method' in tree:
    prefix = ''

  def ignored(key, value):
    at_default = key in _values_left_out() and value == _values_left_out()[key]
    return at_default or any(key == i or key.startswith(i + '.') for i in HASH_IGNORES)

  return {k: _strip(v, f'{prefix}{k}.') for k, v in tree.items() if not ignored(f'{prefix}{k}', v)}


def config_hash(config) -> str:
  """12 hex digits of the sha256 of `config` (a ConfigDict) without HASH_IGNORES."""
  canonical = json.dumps(_strip(json.loads(config.to_json_best_effort())), sort_keys=True)
  return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the table: `overrides` are KEY=VALUE config overrides."""

  method: str
  labels_per_class: int
  seed: int
  overrides: tuple[str, ...] = ()
  tag: str = ''
  config_arg: str = ''  # configs/<method>/digits.py:<config_arg>

  @property
  def main_flags(self) -> list[str]:
    """The main command's flags but --workdir."""
    arg = f':{self.config_arg}' if self.config_arg else ''
    return [
      f'--config=configs/{self.method}/digits.py{arg}',
      f'--config.seed={self.seed}',
      f'--config.labels_per_class={self.labels_per_class}',
      *(f'--config.{o}' for o in self.overrides),
    ]

  @functools.cached_property
  def config_hash(self) -> str:
    """Raises SystemExit with one line for an override that the config cannot take."""
    absolute = [f.replace('configs/', f'{REPO}/configs/', 1) for f in self.main_flags]
    name = f'{self.method}:{self.config_arg}' if self.config_arg else self.method
    path = os.path.join(REPO, 'configs', self.method, 'digits.py')
    try:
      config_base.load_config_file(path, self.config_arg or None)  # One line if it fails.
      return config_hash(parse_config(absolute))
    except config_base.ConfigFileError as error:
      raise SystemExit(f'{name}: {error}') from None
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
      text = str(error)
      if isinstance(error, (AttributeError, KeyError)):  # ConfigDict's: quoted, with '\\n'.
        text = text[1:-1].replace('\\n', ' ').replace("\\'", "'")
      raise SystemExit(f'{name} with {list(self.overrides)}: {text}') from None


def run_key(row: dict) -> tuple:
  """What makes two records the same run; older-format lines (no config hash) match no run."""
  return (row['method'], row.get('config_hash'), row['seed'], labels_of(row))


def labels_of(row: dict) -> int:
  return row.get('labels_per_class', OLDER_FORMAT_LABELS_PER_CLASS)


def read_records(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def append_record(path: str, row: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'a') as f:
    f.write(json.dumps(row) + '\n')


def _figures(results: dict) -> dict:
  """The `*_top1` figures (not test_per_class_top1's list), steps and wall seconds of one
  results.json (or stage)."""
  return {
    **{k: v for k, v in results.items() if k.endswith('_top1') and isinstance(v, float)},
    'steps': results['steps'],
    'wall_seconds': results['wall_seconds'],
  }


def record_row(run: Run, results: dict, provenance: dict) -> dict:
  """The results file's line of a finished run."""
  stages = {name: _figures(r) for name, r in results.get('stages', {}).items()}
  row = {
    'method': run.method,
    'config_arg': run.config_arg,
    'labels_per_class': run.labels_per_class,
    'seed': run.seed,
    'config_hash': run.config_hash,
    'tag': run.tag,
    'overrides': list(run.overrides),
    **_figures(results),
    'skipped_steps': results.get('skipped_steps', 0),
    'commit': provenance['commit'],
    'machine': provenance['machine'],
    'date': datetime.date.today().isoformat(),
  }
  if stages:
    row['stages'] = stages
    row['wall_seconds'] = round(sum(s['wall_seconds'] for s in stages.values()), 1)
  return row


def stage_rows(rows: list[dict]) -> list[dict]:
  """`rows` with each staged run's line replaced by a line per stage, whose method is
  '<method>/<stage>' and whose figures are the stage's."""
  expanded = []
  for row in rows:
    run = {k: v for k, v in row.items() if k != 'stages' and not k.endswith('_top1')}
    expanded.extend(
      [{**run, **figures, 'method': f'{row["method"]}/{name}'} for name, figures in stages.items()]
      if (stages := row.get('stages'))
      else [row]
    )
  return expanded


def train(run: Run, workdir: str) -> None:
  """Trains (or resumes) `run` in `workdir` with the main command."""
  command = [sys.executable, '-m', 'semi_ssl.main', *run.main_flags, f'--workdir={workdir}']
  if subprocess.run(command, cwd=REPO).returncode:
    raise SystemExit(f'{run} failed: `{" ".join(command)}` (cwd {REPO}); see its log above.')


def ensure(run: Run, *, record: str, root: str, train_fn=train) -> dict:
  """`run`'s line of `record`: the recorded one, else that of its finished workdir, else that
  of a run trained now (`train_fn(run, workdir)`), appended to `record`."""
  key = (run.method, run.config_hash, run.seed, run.labels_per_class)
  done = next((row for row in read_records(record) if run_key(row) == key), None)
  if done is not None:
    return done
  name = f'{run.method}_{run.config_hash}_l{run.labels_per_class}_s{run.seed}'
  workdir = os.path.join(root, name)
  results = os.path.join(workdir, 'results.json')
  provenance = os.path.join(workdir, PROVENANCE_FILE)
  if not os.path.exists(results):
    if not os.path.exists(provenance):  # A resumed run keeps the commit it started with.
      os.makedirs(workdir, exist_ok=True)
      with open(provenance, 'w') as f:
        json.dump({'commit': commit(), 'machine': machine()}, f)
    train_fn(run, workdir)
  if not os.path.exists(provenance):
    raise SystemExit(
      f'{workdir} holds a run this script did not start ({PROVENANCE_FILE} is missing): '
      'delete it, or use another --root.'
    )
  with open(results) as f, open(provenance) as g:
    row = record_row(run, json.load(f), json.load(g))
  append_record(record, row)
  return row


def split_values(text: str) -> list[str]:
  """'0.1,(1, 2),x' -> ['0.1', '(1, 2)', 'x']: commas inside brackets do not split."""
  values, depth, start = [], 0, 0
  for i, char in enumerate(text):
    depth += (char in '([{') - (char in ')]}')
    if char == ',' and depth == 0:
      values.append(text[start:i])
      start = i + 1
  return values + [text[start:]]


def grid_settings(grid: list[str]) -> list[tuple[str, ...]]:
  """The product of `--grid KEY=V1,V2` entries: [('KEY=V1', 'KEY2=W1'), ...], at most 6."""
  axes = []
  for entry in grid:
    key, sep, values = entry.partition('=')
    if not sep or not values:
      raise SystemExit(
        f'--grid={entry}: give KEY=V1,V2,... (e.g. optimizer.learning_rate=0.05,0.1).'
      )
    axes.append([f'{key}={v}' for v in split_values(values)])
  settings = list(itertools.product(*axes))
  if len(settings) > MAX_SEARCH_SETTINGS:
    raise SystemExit(
      f'--grid gives {len(settings)} settings, more than {MAX_SEARCH_SETTINGS}: '
      'search fewer values.'
    )
  return settings


def _mean_std(values: list[float]) -> str:
  """'92.00 ± 2.00' (percent, sample std), or '92.00' for one value; '–' for none."""
  if not values:
    return '–'
  mean = f'{100 * np.mean(values):.2f}'
  return mean if len(values) == 1 else f'{mean} ± {100 * np.std(values, ddof=1):.2f}'


def group_runs(rows: list[dict]) -> dict[tuple, list[dict]]:
  """{(labels per class, method, config hash or None): rows}, in order of first appearance;
  the same config measured twice (same key and seed) counts its first line only."""
  groups, seen = {}, set()
  for row in stage_rows(rows):
    if run_key(row) in seen:
      continue
    seen.add(run_key(row))
    groups.setdefault((labels_of(row), row['method'], row.get('config_hash')), []).append(row)
  return groups


def _unique(values) -> list:
  return list(dict.fromkeys(values))


def _method_name(method: str, config_arg: str, tags: list[str]) -> str:
  """'s4l:vat_entmin', 's4l:moam/joint': the method (and stage) with its config argument,
  unless a tag of the same name already shows it."""
  name, _, stage = method.partition('/')
  if config_arg and config_arg not in tags:
    name = f'{name}:{config_arg}'
  return f'{name}/{stage}' if stage else name


def format_report(rows: list[dict], min_seeds: int = 3) -> str:
  """The README table: one line per (labels per class, method, config) with `min_seeds` seeds
  or more, validation, test and kNN top-1 (%) as mean ± sample std over the seeds present
  ('–': not measured, as in runs from before the validation split)."""
  lines = [
    '| labels/class | method | option | config | val top-1 (%) | test top-1 (%) | kNN top-1 (%) '
    '| n | steps | machine | commits |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  groups = group_runs(rows)
  methods = _unique(row['method'] for row in stage_rows(rows))
  order = sorted(groups, key=lambda g: (g[0], methods.index(g[1])))  # Stable: first seen first.
  few = [g for g in order if len(groups[g]) < min_seeds]
  for key in order:
    runs = groups[key]
    if len(runs) < min_seeds:
      continue
    labels, method, hash_ = key
    figure = lambda name: _mean_std([r[name] for r in runs if name in r])
    tags = [t for t in _unique(r.get('tag', '') for r in runs) if t]
    cells = [
      str(labels),
      _method_name(method, runs[0].get('config_arg', ''), tags),
      ', '.join(tags) or '–',
      hash_ or 'older',
      figure('val_top1'),
      figure('test_top1'),
      figure('knn_top1'),
      str(len(runs)),
      '/'.join(str(s) for s in _unique(r['steps'] for r in runs)),
      '; '.join(_unique(r['machine'] for r in runs)),
      ', '.join(_unique(r['commit'] for r in runs)),
    ]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if few:
    lines.append(
      f'\n{len(few)} configs with fewer than {min_seeds} seeds (validation searches) are not '
      f'shown: {sum(len(groups[g]) for g in few)} runs.'
    )
  return '\n'.join(lines)


def require_validation(row: dict, setting: tuple[str, ...]) -> None:
  if 'val_top1' not in row:
    raise SystemExit(
      f'No val_top1 in the results of {list(setting)}: the search needs a code with the '
      'validation split (results.json val_top1).'
    )


def rank_settings(rows_by_setting: dict[tuple[str, ...], list[dict]]) -> str:
  """Settings ranked by mean val_top1 over their runs (validation only, never test)."""
  for setting, rows in rows_by_setting.items():
    for row in rows:
      require_validation(row, setting)
  mean_val = lambda s: np.mean([r['val_top1'] for r in rows_by_setting[s]])
  lines = [f'{"rank":>4}  {"val top-1 (%)":>15}  {"val kNN (%)":>15}  n  setting']
  for rank, setting in enumerate(sorted(rows_by_setting, key=mean_val, reverse=True), 1):
    rows = rows_by_setting[setting]
    knn = _mean_std([r['val_knn_top1'] for r in rows if 'val_knn_top1' in r])
    val = _mean_std([r['val_top1'] for r in rows])
    lines.append(f'{rank:>4}  {val:>15}  {knn:>15}  {len(rows)}  {" ".join(setting)}')
  return '\n'.join(lines)


README_MARKERS = ('<!-- digits_table --report: begin -->', '<!-- digits_table --report: end -->')


def with_table(text: str, table: str) -> str:
  """`text` with what lies between its two `README_MARKERS` lines replaced by `table`."""
  begin, end = README_MARKERS
  if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
    raise SystemExit(f'--readme: the file needs one line {begin} and, after it, one line {end}.')
  head, rest = text.split(begin + '\n')
  _, tail = rest.split(end)
  return f'{head}{begin}\n{table}\n{end}{tail}'


def main(argv):
  del argv
  if _REPORT.value:
    table = format_report(read_records(_RECORD.value), _MIN_SEEDS.value)
    if _README.value:
      with open(_README.value) as f:
        text = with_table(f.read(), table)
      with open(_README.value, 'w') as f:
        f.write(text)
    else:
      print(table)
    return
  search = _SEARCH.value
  if bool(_GRID.value) != search:
    raise SystemExit('--search and --grid go together: --set gives the settings of one config.')
  settings = grid_settings(_GRID.value) if search else [()]
  seeds = [int(s) for s in (_SEEDS.value or (['0', '1'] if search else ['0', '1', '2', '3', '4']))]
  plan = [
    (setting, Run(m, int(labels), seed, (*_SET.value, *setting), _TAG.value, arg))
    for m, _, arg in (entry.partition(':') for entry in _METHODS.value)
    for labels in _LABELS.value
    for setting in settings
    for seed in seeds
  ]
  for _, run in plan:
    run.config_hash  # Every override checked before any training.
  rows = []
  for setting, run in plan:
    rows.append(ensure(run, record=_RECORD.value, root=_ROOT.value))
    if search:  # Stops after the first run when there is nothing to rank by.
      require_validation(rows[-1], setting)
  if not search:
    print(format_report(rows, min_seeds=1))
    return
  for entry, labels in itertools.product(_METHODS.value, _LABELS.value):
    m, _, arg = entry.partition(':')
    by_setting = {}
    for (setting, run), row in zip(plan, rows):
      if (run.method, run.config_arg, run.labels_per_class) == (m, arg, int(labels)):
        by_setting.setdefault(setting, []).append(row)
    print(f'\n{entry}, {labels} labels per class:\n{rank_settings(by_setting)}')


if __name__ == '__main__':
  app.run(main)
