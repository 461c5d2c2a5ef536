"""Accuracy table on the embedded digits data: method x labelled-split seed -> test top-1.

    python -m benchmarks.digits_table --methods=supervised,suave --seeds=0,1,2 \
        --root=/tmp/digits_table

Each cell is one run of the README's main command (`python -m semi_ssl.main
--config=configs/<method>/digits.py --workdir=ROOT/<method>_seed<S> --config.seed=S`); a
finished run is read back from its results.json, so the script can be stopped and restarted.
Each run this script trains is appended to `--record` (JSON lines: method, seed, figures,
code commit, CPU, date), which is committed, so the record grows across sessions.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys

import numpy as np
from absl import app, flags

_METHODS = flags.DEFINE_list(
  'methods', ['supervised', 'suave'], 'Configs under configs/<m>/digits.py.'
)
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Labelled-split seeds.')
_ROOT = flags.DEFINE_string('root', '/tmp/digits_table', 'Parent of the workdirs.')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RECORD = flags.DEFINE_string(
  'record',
  os.path.join(REPO, 'benchmarks', 'results', 'digits.jsonl'),
  'JSON-lines file that every run trained here is appended to.',
)


def machine() -> str:
  """The CPU model and the cores this process may use, e.g. 'AMD EPYC 7B13, 2 cores'."""
  try:
    with open('/proc/cpuinfo') as f:
      model = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    model = platform.processor() or platform.machine()
  return f'{model}, {len(os.sched_getaffinity(0))} cores'


def record(method: str, seed: str, results: dict) -> None:
  """Appends one run's figures, with the commit and machine that made them, to --record."""
  commit = subprocess.run(
    ['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True
  ).stdout.strip()
  row = {
    'method': method,
    'seed': int(seed),
    'test_top1': results['test_top1'],
    'knn_top1': results['knn_top1'],
    'steps': results['steps'],
    'wall_seconds': results['wall_seconds'],
    'commit': commit,
    'machine': machine(),
    'date': datetime.date.today().isoformat(),
  }
  os.makedirs(os.path.dirname(_RECORD.value), exist_ok=True)
  with open(_RECORD.value, 'a') as f:
    f.write(json.dumps(row) + '\n')


def run(method: str, seed: str) -> dict:
  workdir = os.path.join(_ROOT.value, f'{method}_seed{seed}')
  results = os.path.join(workdir, 'results.json')
  trained = not os.path.exists(results)
  if trained:
    subprocess.run(
      [
        sys.executable,
        '-m',
        'semi_ssl.main',
        f'--config=configs/{method}/digits.py',
        f'--workdir={workdir}',
        f'--config.seed={seed}',
      ],
      cwd=REPO,
      check=True,
    )
  with open(results) as f:
    figures = json.load(f)
  if trained:
    record(method, seed, figures)
  return figures


def main(argv):
  del argv
  rows = [(m, s, run(m, s)) for m in _METHODS.value for s in _SEEDS.value]
  print(f'\n{"method":<12}{"seed":>6}{"test_top1":>11}{"knn_top1":>10}{"wall_s":>9}')
  for method, seed, r in rows:
    print(
      f'{method:<12}{seed:>6}{100 * r["test_top1"]:>10.2f}%{100 * r["knn_top1"]:>9.2f}%'
      f'{r["wall_seconds"]:>9.1f}'
    )
  print()
  for method in _METHODS.value:
    top1 = [100 * r['test_top1'] for m, _, r in rows if m == method]
    wall = [r['wall_seconds'] for m, _, r in rows if m == method]
    print(
      f'{method:<12} mean test_top1 {np.mean(top1):.2f}% +- {np.std(top1):.2f} '
      f'over {len(top1)} seeds, mean wall {np.mean(wall):.0f} s'
    )


if __name__ == '__main__':
  app.run(main)
