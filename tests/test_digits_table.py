"""benchmarks/digits_table.py without training: the config hash, the skip logic of the results
file, the README table and the validation search's ranking."""

import json

import ml_collections
import pytest

from benchmarks import digits_table
from benchmarks.digits_table import Run


def test_config_hash_names_what_is_learned_only():
  base = Run('suave', 5, 0).config_hash
  assert Run('suave', 5, 0).config_hash == base  # Stable: parsed anew, same hash.
  elsewhere = ('init_from.workdir=/elsewhere', 'log_every=7', 'checkpoint_every=10')
  assert Run('suave', 1, 3, elsewhere).config_hash == base  # Seed, labels, workdirs, logging.
  assert Run('suave', 5, 0, ('suave.mixup_alpha=1.0',)).config_hash == base  # The default.
  assert Run('suave', 5, 0, ('suave.mixup_alpha=0',)).config_hash != base
  assert Run('daino', 5, 0).config_hash != base
  staged = Run('simclrv2', 5, 0).config_hash  # Its stages' sections hold the seed too.
  assert Run('simclrv2', 1, 3).config_hash == staged != base
  in_order = ml_collections.ConfigDict({'a': 1, 'b': {'c': 2, 'd': 3}})
  reordered = ml_collections.ConfigDict({'b': {'d': 3, 'c': 2}, 'a': 1})
  assert digits_table.config_hash(in_order) == digits_table.config_hash(reordered)


def test_keys_added_later_leave_the_hash_alone_at_their_defaults():
  # The hash of supervised's config as recorded before optimizer.schedule, polyak_decay ...
  # existed (benchmarks/results/digits.jsonl, commit ff52e11).
  assert Run('supervised', 5, 0).config_hash == 'ef875203d4ee'
  assert Run('supervised', 5, 0, ('optimizer.schedule=cosine',)).config_hash == 'ef875203d4ee'
  assert Run('supervised', 5, 0, ('polyak_decay=0.99',)).config_hash != 'ef875203d4ee'
  # S4L's vat_entmin as recorded before s4l.label_smoothing existed (commit 33d955f).
  vat, entmin = dict(config_arg='vat_entmin'), 's4l.entmin_weight=1.0'
  assert Run('s4l', 5, 0, (entmin,), **vat).config_hash == '6fe82d809822'
  smoothed = (entmin, 's4l.label_smoothing=0.1')
  assert Run('s4l', 5, 0, smoothed, **vat).config_hash != '6fe82d809822'


def test_a_config_argument_is_passed_on_and_names_another_config():
  official = Run('suave', 5, 0, config_arg='official')
  assert official.main_flags[0] == 'configs/suave/digits.py:official'.join(('--config=', ''))
  assert official.config_hash != Run('suave', 5, 0).config_hash
  row = digits_table.record_row(official, _results(), {'commit': 'c', 'machine': 'm'})
  assert (row['method'], row['config_arg']) == ('suave', 'official')
  with pytest.raises(
    SystemExit, match="^suave:offical: .*digits.py.*unknown argument ':offical': use"
  ):
    Run('suave', 5, 0, config_arg='offical').config_hash


def test_a_staged_run_is_recorded_and_reported_stage_by_stage():
  stage = lambda top1, steps, wall: {'knn_top1': top1, 'steps': steps, 'wall_seconds': wall}
  stages = {'pretrain': stage(0.8, 3, 1.0), 'finetune': {**stage(0.6, 2, 2.0), 'test_top1': 0.9}}
  results = {**stages['finetune'], 'stages': stages}
  rows = [
    digits_table.record_row(Run('simclrv2', 5, seed), results, {'commit': 'c', 'machine': 'm'})
    for seed in range(3)
  ]
  assert rows[0]['stages'] == stages and rows[0]['wall_seconds'] == 3.0
  assert (rows[0]['test_top1'], rows[0]['steps']) == (0.9, 2)  # The last stage's.
  lines = digits_table.format_report(rows).splitlines()[2:]
  assert [line.split(' | ')[1:3] for line in lines] == [
    ['simclrv2/pretrain', '–'],
    ['simclrv2/finetune', '–'],
  ]
  assert ' | – | 80.00 ± 0.00 | 3 | 3 |' in lines[0]  # No test top-1; the stage's kNN, steps.
  assert ' | 90.00 ± 0.00 | 60.00 ± 0.00 | 3 | 2 |' in lines[1]


def test_the_table_names_a_config_argument_beside_the_method_unless_tagged():
  machine = {'commit': 'c', 'machine': 'm'}
  rows = [
    digits_table.record_row(Run(method, 5, seed, config_arg=arg, tag=tag), _results(), machine)
    for method, arg, tag in (('s4l', 'vat_entmin', ''), ('suave', 'official', 'official'))
    for seed in range(3)
  ]
  lines = digits_table.format_report(rows).splitlines()[2:]
  assert [line.split(' | ')[1:3] for line in lines] == [
    ['s4l:vat_entmin', '–'],
    ['suave', 'official'],
  ]


def test_a_bad_override_stops_with_one_line_before_any_run():
  with pytest.raises(SystemExit) as error:
    Run('suave', 5, 0, ('suave.mixup_alfa=0',)).config_hash
  assert str(error.value) == (
    "suave with ['suave.mixup_alfa=0']: 'mixup_alfa' "
    'Did you mean "mixup_alpha" instead of "mixup_alfa"?'
  )


def _results() -> dict:
  return {'test_top1': 0.9, 'knn_top1': 0.8, 'val_top1': 0.7, 'steps': 4, 'wall_seconds': 1.0}


def test_runs_in_the_results_file_are_skipped_and_each_new_one_recorded_once(tmp_path):
  record, root = str(tmp_path / 'digits.jsonl'), str(tmp_path / 'runs')
  older = {'method': 'suave', 'seed': 0, **_results(), 'commit': 'a', 'machine': 'm'}
  done = Run('suave', 5, 1)
  recorded = digits_table.record_row(done, _results(), {'commit': 'b', 'machine': 'm'})
  with open(record, 'w') as f:
    f.write(json.dumps(older) + '\n' + json.dumps(recorded) + '\n')
  trained = []

  def fake_train(run, workdir):
    trained.append(run)
    with open(f'{workdir}/results.json', 'w') as f:
      json.dump(_results(), f)

  plan = [
    Run('suave', 5, 0),  # Only the older format has it: another config.
    done,
    Run('suave', 1, 1),  # Another label count.
    Run('suave', 5, 1, ('suave.mixup_alpha=0',), tag='no_mixup'),  # Another config.
  ]
  for _ in range(2):
    rows = [digits_table.ensure(r, record=record, root=root, train_fn=fake_train) for r in plan]
  assert trained == [plan[0], plan[2], plan[3]]  # Once each, and the second pass trains none.
  lines = digits_table.read_records(record)
  assert lines[:2] == [older, recorded] and lines[2:] == [rows[0], rows[2], rows[3]]
  assert rows[3]['tag'] == 'no_mixup' and rows[3]['overrides'] == ['suave.mixup_alpha=0']
  assert rows[3]['config_hash'] == plan[3].config_hash != rows[0]['config_hash']
  assert (rows[0]['val_top1'], rows[0]['steps'], rows[0]['labels_per_class']) == (0.7, 4, 5)

  # A finished workdir of an interrupted session is recorded, not trained again; one this
  # script did not start (no record of its commit) stops the run.
  lines_before = len(digits_table.read_records(record))
  for seed, started_here in ((2, True), (3, False)):
    run = Run('suave', 5, seed)
    workdir = tmp_path / 'runs' / f'suave_{run.config_hash}_l5_s{seed}'
    workdir.mkdir()
    (workdir / 'results.json').write_text(json.dumps(_results()))
    if started_here:
      provenance = {'commit': 'c', 'machine': 'm'}
      (workdir / digits_table.PROVENANCE_FILE).write_text(json.dumps(provenance))
      assert (
        digits_table.ensure(run, record=record, root=root, train_fn=fake_train)['commit'] == 'c'
      )
    else:
      with pytest.raises(SystemExit, match='holds a run this script did not start'):
        digits_table.ensure(run, record=record, root=root, train_fn=fake_train)
  assert len(trained) == 3 and len(digits_table.read_records(record)) == lines_before + 1


def _row(method, seed, test, labels=None, hash_=None, tag='', commit='abc', knn=0.5, val=None):
  row = {'method': method, 'seed': seed, 'test_top1': test, 'knn_top1': knn, 'steps': 10}
  if val is not None:
    row['val_top1'] = val
  if hash_:
    row.update(labels_per_class=labels, config_hash=hash_, tag=tag)
  return {**row, 'commit': commit, 'machine': 'CPU, 2 cores'}


def test_report_gives_mean_and_std_over_the_seeds_of_each_config(tmp_path):
  rows = [
    *(_row('supervised', s, t) for s, t in enumerate([0.90, 0.92, 0.94])),  # Older format.
    *(_row('suave', s, t, 5, 'h1', commit='c1') for s, t in enumerate([0.95, 0.97])),
    _row('suave', 2, 0.96, 5, 'h1', tag='official', commit='c2'),
    _row('suave', 2, 0.10, 5, 'h1', commit='c3'),  # The same run again: its first line counts.
    *(_row('suave', s, t, 1, 'h1', knn=0.6, val=v) for s, t, v in [(0, 0.5, 0.3), (1, 0.6, 0.5)]),
    _row('suave', 2, 0.7, 1, 'h1', knn=0.6, val=0.4),
    *(_row('daino', s, 0.8, 5, 'h2') for s in range(2)),  # A search's 2 seeds.
  ]
  path = tmp_path / 'digits.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  lines = digits_table.format_report(digits_table.read_records(str(path))).splitlines()
  assert lines[2:] == [
    '| 1 | suave | – | h1 | 40.00 ± 10.00 | 60.00 ± 10.00 | 60.00 ± 0.00 | 3 | 10 | CPU, 2 cores '
    '| abc |',
    '| 5 | supervised | – | older | – | 92.00 ± 2.00 | 50.00 ± 0.00 | 3 | 10 | CPU, 2 cores '
    '| abc |',
    '| 5 | suave | official | h1 | – | 96.00 ± 1.00 | 50.00 ± 0.00 | 3 | 10 | CPU, 2 cores '
    '| c1, c2 |',
    '',
    '1 configs with fewer than 3 seeds (validation searches) are not shown: 2 runs.',
  ]


def test_search_ranks_settings_by_validation_and_never_shows_test():
  row = lambda val, test: {'val_top1': val, 'val_knn_top1': val, 'test_top1': test}
  ranking = digits_table.rank_settings(
    {
      ('a=1',): [row(0.80, 0.99), row(0.90, 0.99)],
      ('a=2',): [row(0.95, 0.50), row(0.85, 0.50)],
    }
  ).splitlines()
  assert [line.split()[-1] for line in ranking[1:]] == ['a=2', 'a=1']
  assert '90.00 ± 7.07' in ranking[1] and not any('99' in line for line in ranking)
  with pytest.raises(SystemExit, match='needs a code with the validation split'):
    digits_table.rank_settings({('a=1',): [{'test_top1': 0.9}]})


def test_grid_settings_are_the_product_of_at_most_6():
  assert digits_table.grid_settings(['x=1,2', 'y=(1, 2),3']) == [
    ('x=1', 'y=(1, 2)'),
    ('x=1', 'y=3'),
    ('x=2', 'y=(1, 2)'),
    ('x=2', 'y=3'),
  ]
  with pytest.raises(SystemExit, match='7 settings, more than 6'):
    digits_table.grid_settings(['x=1,2,3,4,5,6,7'])


def test_readme_table_is_written_between_its_markers_only():
  begin, end = digits_table.README_MARKERS
  text = f'# Title\n\nIntro.\n{begin}\n| old |\n| rows |\n{end}\nAfter.\n'
  assert (
    digits_table.with_table(text, '| new |')
    == f'# Title\n\nIntro.\n{begin}\n| new |\n{end}\nAfter.\n'
  )
  for broken in (text.replace(end, ''), f'{end}\n{begin}\n', text + begin):
    with pytest.raises(SystemExit, match='needs one line'):
      digits_table.with_table(broken, '| new |')


def test_a_record_row_keeps_the_top1_figures_but_the_per_class_list():
  results = {'test_top1': 0.9, 'test_per_class_top1': [1.0, 0.8], 'steps': 2, 'wall_seconds': 1}
  row = digits_table.record_row(Run('supervised', 5, 0), results, {'commit': 'c', 'machine': 'm'})
  assert row['test_top1'] == 0.9 and 'test_per_class_top1' not in row
