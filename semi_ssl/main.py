"""Entry point: python -m semi_ssl.main --config=configs/<method>/<benchmark>.py --workdir=DIR

Any config value can be overridden, e.g. `--config.seed=3 --config.num_steps=500`. The same
command resumes an interrupted run from DIR's latest checkpoint. A config with `stages`
runs each stage in DIR/<stage name>, skipping the finished ones.

Exit status: 0 when finished or preempted (SIGTERM: saved, resumable), 130 after Ctrl-C
(saved, resumable; a second Ctrl-C stops at once, without saving), 1 with a one-line message
for bad input (config, checkpoint, data, disk) or a diverged run.
"""

from __future__ import annotations

import json
import logging as python_logging
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Path to a config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, TensorBoard events, results.json.')
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address',
  None,
  'Multi-process runs without SLURM or Cloud TPU: HOST:PORT '
  'of process 0, with --num_processes and --process_id.',
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')
_CHECK_FINISHED = flags.DEFINE_bool(
  'check_finished',
  False,
  'Train nothing: exit 0 when the run in --workdir has finished (its '
  'results.json, of a staged run too, written), 3 when not. '
  'For launchers that requeue an unfinished job.',
)
flags.mark_flags_as_required(['config', 'workdir'])
# What parse_flags changed for the log: main logs it, as absl logs INFO only after parsing.
PARSE_NOTES: list[str] = []


class Plan(list):
  """[(stage config, stage workdir)] of a config with `stages`, and `workdir`: the run's
  DIR, whose results.json gathers the stages' (`run_plan`)."""

  def __init__(self, stages, workdir: str):
    super().__init__(stages)
    self.workdir = workdir


def stage_plan(config, workdir: str) -> list[tuple[object, str]]:
  """[(stage config, stage workdir)] with `init_from.stage` and a frozen teacher's
  `<method>.teacher.stage` resolved to a workdir: DIR/<stage>, or the stage's
  `finished_workdir` (a finished run elsewhere, read and not trained here)."""
  if not config.stages:
    return [(config, workdir)]
  plan, stage_dirs = [], {}
  for stage in config.stages:
    stage = stage.copy_and_resolve_references()
    if stage.init_from.stage:
      with stage.unlocked():
        stage.init_from.workdir = stage_dirs.get(
          stage.init_from.stage, os.path.join(workdir, stage.init_from.stage)
        )
        stage.init_from.stage = None
    teacher = stage.get(stage.method, {}).get('teacher')  # A frozen teacher's stage, likewise.
    if teacher is not None and teacher.get('stage'):
      with stage.unlocked():
        teacher.workdir = stage_dirs.get(teacher.stage, os.path.join(workdir, teacher.stage))
        teacher.stage = None
    stage_dirs[stage.name] = stage.finished_workdir or os.path.join(workdir, stage.name)
    plan.append((stage, stage_dirs[stage.name]))
  return Plan(plan, workdir)


def _plan_results_path(plan: list[tuple[object, str]]):
  """DIR/results.json of a staged plan, None for one run (its results are its workdir's)."""
  from etils import epath
  from semi_ssl import train

  return epath.Path(plan.workdir) / train.RESULTS_FILE if isinstance(plan, Plan) else None


def finished(plan: list[tuple[object, str]]) -> bool:
  """Whether every stage of `plan` has written its results, and a staged plan DIR/results.json
  (a finished run writes nothing)."""
  from etils import epath
  from semi_ssl import train

  summary = _plan_results_path(plan)
  return (summary is None or summary.exists()) and all(
    (epath.Path(stage_dir) / train.RESULTS_FILE).exists() for _, stage_dir in plan
  )


def validate_plan(plan: list[tuple[object, str]], workdir: str, *, num_devices: int) -> None:
  """Raises ValueError for a workdir in a bucket that cannot be reached, for the first stage
  config that cannot run, or for a workdir that cannot be written while some stage has no
  results yet (re-reporting a finished run writes nothing)."""
  from semi_ssl import config_base

  config_base.check_bucket(workdir)  # Before anything there is read.
  writes = not finished(plan)
  for stage_config, _ in plan:
    config_base.validate(stage_config, num_devices=num_devices, workdir=workdir if writes else None)


def run_plan(plan: list[tuple[object, str]]) -> list[dict]:
  """Runs each stage in order, skipping the finished ones; their results, one row each.

  A stage with `finished_workdir` is never trained here: its results are read from there.
  A staged plan then writes DIR/results.json, once: the last stage's results, and every
  stage's as {name: results} under `stages`.
  """
  import jax
  from etils import epath
  from semi_ssl import train

  rows = []
  for stage_config, stage_dir in plan:
    results_path = epath.Path(stage_dir) / train.RESULTS_FILE  # A local path or gs://.
    if isinstance(plan, Plan) and stage_config.finished_workdir:
      _check_finished_elsewhere(stage_config, stage_dir)
      results = train.read_results(results_path)
    elif results_path.exists():
      train.check_config_unchanged(stage_config, stage_dir)
      logging.info('Stage %s already finished: %s', stage_config.name or '-', results_path)
      results = train.read_results(results_path)
    else:
      results = train.train_and_evaluate(stage_config, stage_dir)
    rows.append({'stage': stage_config.name or '-', **results})
  summary = _plan_results_path(plan)
  if summary is not None and not summary.exists() and jax.process_index() == 0:
    stages = {row['stage']: {k: v for k, v in row.items() if k != 'stage'} for row in rows}
    last = {k: v for k, v in rows[-1].items() if k != 'stage'}
    summary.parent.mkdir(parents=True, exist_ok=True)  # Made by no stage trained here.
    train._write_json(summary, {**last, 'stages': stages})  # pylint: disable=protected-access
  return rows


def _check_finished_elsewhere(stage_config, stage_dir: str) -> None:
  """Raises UserError unless `stage_dir` (the stage's `finished_workdir`) holds a finished run
  of the stage: its config but for the labelled subset (a pretraining reads no labels)."""
  from etils import epath
  from semi_ssl import config_base, errors, train

  name = stage_config.name
  if not (epath.Path(stage_dir) / train.RESULTS_FILE).exists():
    raise errors.UserError(
      f'Stage {name}: finished_workdir={stage_dir} holds no finished run (no '
      f'{train.RESULTS_FILE}): finish that run first, or unset it to train the stage here.'
    )
  train.check_unchanged(
    stage_dir,
    train.CONFIG_FILE,
    json.loads(stage_config.to_json_best_effort()),
    (*config_base.RESUME_MAY_CHANGE, 'labels_per_class', 'label_fraction'),
    fix=f"Point stage {name}'s finished_workdir at a run of the same stage, or unset it.",
  )
  logging.info('Stage %s: the finished run in %s, not trained here.', name, stage_dir)


def format_table(rows: list[dict]) -> str:
  """A short results table, one row per stage."""
  columns = [
    'stage',
    'method',
    'dataset',
    'labels',
    'seed',
    'steps',
    'val_top1',
    'test_top1',
    'test_top5',
    'knn_top1',
    'linear_top1',
    'wall_s',
  ]

  def cell(row, col):
    value = {
      'labels': row.get('labels_per_class') or row.get('label_fraction'),
      'wall_s': row.get('wall_seconds'),
    }.get(col, row.get(col))
    if isinstance(value, float) and col != 'wall_s':
      return f'{100 * value:.2f}%' if col.endswith('top1') or col.endswith('top5') else f'{value:g}'
    return '-' if value is None else str(value)

  table = [columns] + [[cell(r, c) for c in columns] for r in rows]
  widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
  fmt = lambda line: '  '.join(v.rjust(w) for v, w in zip(line, widths))
  return '\n'.join([fmt(table[0]), fmt(['-' * w for w in widths])] + [fmt(l) for l in table[1:]])


def config_key_error(argv: list[str], config_arg: str) -> str | None:
  """One line naming the first `--config.a.b=` override whose key does not exist, or None."""
  from ml_collections import config_dict
  from semi_ssl import config_base

  path, _, arg = config_arg.partition(':')
  config = config_base.load_config_file(path, arg or None)
  for flag in argv:
    if not flag.startswith('--config.'):
      continue
    name = flag[len('--config.') :].split('=')[0]
    node = config
    for depth, key in enumerate(name.split('.')):
      if not isinstance(node, config_dict.ConfigDict) or key not in node:
        keys = node.keys() if isinstance(node, config_dict.ConfigDict) else ()
        known = '.'.join(name.split('.')[:depth]) or 'the config'
        return (
          f"--config.{name}: '{key}' is not a key of {known}{config_base.closest_key(key, keys)}."
        )
      node = node[key]
  return None


def _unset_other_labelled_key(config, given) -> list[str]:
  """Unsets the config file's label_fraction when the command line gives only
  labels_per_class, and the other way round; the same for each steps/epochs pair
  (`num_steps` and `num_epochs`, ...): `given` holds the overridden keys.

  Returns a line for the log for each key it unset.
  """
  from semi_ssl import config_base

  notes = []
  for pair in [('labels_per_class', 'label_fraction'), *config_base.epoch_pairs(config)]:
    for key, other in (pair, pair[::-1]):
      if key in given and other not in given and None not in (config[key], config[other]):
        notes.append(
          f'--config.{key}={config[key]} given: unsetting config.{other}='
          f'{config[other]} of the config file.'
        )
        config.update_from_flattened_dict({other: None})
  return notes


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with one line instead of a stack trace for a bad config file or override.

  `--config.KEY=None` unsets a key that is None unless set (`config_base.OPTIONAL_KEYS`), which
  absl's parsers would read as an int, float or string; see also `_unset_other_labelled_key`.
  """
  from semi_ssl import config_base

  config_arg = next(
    (
      a.split('=', 1)[1] if '=' in a else b
      for a, b in zip(argv, argv[1:] + [''])
      if a.split('=')[0] == '--config'
    ),
    '',
  )
  if config_arg:
    try:
      config_base.load_config_file(*config_arg.split(':', 1))
    except config_base.ConfigFileError as error:
      sys.exit(f'Config error: {error}')
  prefix = '--config.'
  overrides = dict(
    a[len(prefix) :].split('=', 1) for a in argv if a.startswith(prefix) and '=' in a
  )
  unsets = {f'{prefix}{key}=None' for key in config_base.OPTIONAL_KEYS}  # Set after parsing.
  try:
    rest = flags.FLAGS([a for a in argv if a not in unsets])
  except flags.Error as error:
    lines = str(error).strip().splitlines()
    sys.exit(f'FATAL Flags parsing error: {" ".join(lines)}')
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    line = config_key_error(argv, config_arg) if config_arg else None
    sys.exit(f'Config error: {line or f"{type(error).__name__}: {error}"}')
  _CONFIG.value.update_from_flattened_dict(
    {
      key: None
      for key, value in overrides.items()
      if value == 'None' and key in config_base.OPTIONAL_KEYS
    }
  )
  PARSE_NOTES[:] = _unset_other_labelled_key(_CONFIG.value, overrides)
  return rest


class _OwnInfoOnly:
  """Drops libraries' INFO lines (Orbax logs every save in detail); keeps their warnings."""

  @staticmethod
  def filter(record) -> bool:
    return (
      record.levelno >= python_logging.WARNING or f'{os.sep}semi_ssl{os.sep}' in record.pathname
    )


def _exit_quietly(message: str) -> None:
  """Prints `message` as the last line and exits 1, with no interpreter shutdown.

  For a failed checkpoint write: the failed save's other background writes are still running
  and print their own tracebacks (the same error) while they fail, and again at shutdown;
  everything of ours is closed by then. Their Python-level output is dropped from here on.
  """
  sys.stderr.flush()
  sys.stderr = open(os.devnull, 'w')  # pylint: disable=consider-using-with
  time.sleep(0.5)  # Lets a traceback that had started printing finish before the message.
  os.write(2, f'{message}\n'.encode())
  os._exit(1)  # pylint: disable=protected-access


def main(argv):
  del argv
  if _CHECK_FINISHED.value:
    sys.exit(0 if finished(stage_plan(_CONFIG.value, _WORKDIR.value)) else 3)
  from semi_ssl import notices

  notice = notices.install()  # First: a notice that comes while loading or compiling counts.
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  import jax  # After flag parsing, so --help is fast.

  from semi_ssl import jax_compat

  jax_compat.linear_time_tracing()

  from semi_ssl import errors, parallel, train, workdir_lease

  try:
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ValueError as error:
    sys.exit(f'Error: {error}')
  if jax.process_count() > 1:
    notice.hand_sigterm_to_jax()
  if jax.process_index() != 0:  # Process 0 speaks for the run; the others only warn.
    logging.set_verbosity(logging.WARNING)
  for note in PARSE_NOTES:
    logging.info('%s', note)
  config, workdir = _CONFIG.value, _WORKDIR.value
  plan = stage_plan(config, workdir)
  try:
    validate_plan(plan, workdir, num_devices=jax.device_count())
  except ValueError as error:
    sys.exit(f'Config error: {error}')

  try:  # One run at a time in a workdir; re-reporting a finished plan writes nothing.
    with workdir_lease.hold(workdir, needed=not finished(plan)):
      rows = run_plan(plan)
  except errors.Preempted as stopped:
    if jax.process_index() == 0:
      print(stopped, flush=True)
    sys.exit(130 if notice.interrupted else 0)
  except errors.CheckpointWriteError as error:
    _exit_quietly(f'Error: {error}')
  except errors.UserError as error:
    sys.exit(f'Error: {error}')
  if jax.process_index() == 0:
    print(format_table(rows), flush=True)
    results = _plan_results_path(plan) or os.path.join(plan[-1][1], train.RESULTS_FILE)
    print(f'Results: {results}', flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
