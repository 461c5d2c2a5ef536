"""One code style, kept by tools: ruff's formatter and linter as pyproject.toml configures them."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('command', [['format', '--check'], ['check']])
def test_the_tree_keeps_the_style(command):
  result = subprocess.run(
    [sys.executable, '-m', 'ruff', *command, '.'], cwd=REPO, capture_output=True, text=True
  )
  assert result.returncode == 0, (
    f'ruff {" ".join(command)} found problems; run `ruff format . && ruff check --fix .`:\n'
    f'{result.stdout[-3000:]}{result.stderr[-3000:]}'
  )
