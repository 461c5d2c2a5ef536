"""setup.py's accelerator extras: jax's own extras of the same names (read from the installed
jax's metadata, no network), at the jax versions the package pins."""

import importlib.metadata
import os
import runpy

import setuptools
from packaging.requirements import Requirement

from helpers import REPO


def setup_arguments(monkeypatch) -> dict:
  """The keyword arguments setup.py passes to setuptools.setup (which does not run)."""
  arguments = {}
  monkeypatch.setattr(setuptools, 'setup', lambda **kwargs: arguments.update(kwargs))
  monkeypatch.chdir(REPO)
  runpy.run_path(os.path.join(REPO, 'setup.py'))
  return arguments


def test_accelerator_extras_are_jaxs_own_at_the_pinned_versions(monkeypatch):
  arguments = setup_arguments(monkeypatch)
  (pin,) = [r for r in map(Requirement, arguments['install_requires']) if r.name == 'jax']
  assert importlib.metadata.version('jax') in pin.specifier
  accelerators = {
    name: [Requirement(r) for r in requirements]
    for name, requirements in arguments['extras_require'].items()
    if any(Requirement(r).name == 'jax' for r in requirements)
  }
  assert set(accelerators) == {'cuda12', 'cuda13', 'tpu'}
  defined = set(importlib.metadata.metadata('jax').get_all('Provides-Extra'))
  for name, (requirement,) in accelerators.items():
    assert (requirement.name, requirement.extras) == ('jax', {name})
    assert requirement.specifier == pin.specifier, name
    assert name in defined, f'jax {importlib.metadata.version("jax")} has no extra {name}'
