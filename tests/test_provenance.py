"""What a run records about itself: the code commit, library versions and devices
(`provenance`), parameters per top-level module and the start-up summary."""

import subprocess
import sys
import types

import jax
from flax import nnx

from semi_ssl import parallel, provenance


def _git(directory, *args):
  subprocess.run(
    ['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=directory, check=True
  )


def test_code_commit_is_head_dirty_when_tracked_files_differ_none_outside_git(tmp_path):
  assert provenance.code_commit(str(tmp_path)) is None  # Not a checkout.
  (tmp_path / 'code.py').write_text('a = 1\n')
  _git(tmp_path, 'init', '-q')
  _git(tmp_path, 'add', 'code.py')
  _git(tmp_path, 'commit', '-q', '-m', 'first')
  head = subprocess.run(
    ['git', 'rev-parse', 'HEAD'], cwd=tmp_path, capture_output=True, text=True
  ).stdout.strip()
  (tmp_path / 'untracked.py').write_text('b = 2\n')
  assert provenance.code_commit(str(tmp_path)) == head  # Untracked files do not count.
  (tmp_path / 'code.py').write_text('a = 2\n')
  assert provenance.code_commit(str(tmp_path)) == f'{head}-dirty'


def test_code_commit_is_none_without_git(tmp_path, monkeypatch):
  monkeypatch.setenv('PATH', str(tmp_path))
  assert provenance.code_commit() is None


def test_versions_name_tensorflow_only_once_imported(monkeypatch):
  monkeypatch.delitem(sys.modules, 'tensorflow', raising=False)
  assert provenance.versions()['jax'] == jax.__version__
  assert 'tensorflow' not in provenance.versions()
  monkeypatch.setitem(sys.modules, 'tensorflow', types.SimpleNamespace(__version__='9.9'))
  assert provenance.versions()['tensorflow'] == '9.9'


class _TwoModules(nnx.Module):
  def __init__(self, rngs):
    self.body = nnx.Sequential(nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 5, rngs=rngs))
    self.head = nnx.Linear(5, 2, use_bias=False, rngs=rngs)


def test_parameter_counts_per_top_level_module_and_summary():
  params = nnx.state(nnx.eval_shape(lambda: _TwoModules(nnx.Rngs(0))), nnx.Param)
  assert provenance.parameter_counts(params) == {'body': 3 * 4 + 4 + 4 * 5 + 5, 'head': 10}
  mesh = parallel.create_mesh(2)
  summary = provenance.run_summary(
    mesh,
    batch_sizes=dict(labelled=16, unlabelled=None),
    params=params,
    resolved={'num_steps': 4},
    record={'commit': None},
  )
  assert summary['mesh'] == {'data': 4, 'model': 2}
  assert summary['batch'] == {'labelled': {'global': 16, 'per_device': 2}}
  assert summary['parameters'] == {'body': 41, 'head': 10, 'total': 51}
  assert summary['devices']['count'] == summary['devices']['local_count'] == 8
