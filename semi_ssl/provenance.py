"""What a run ran on: the code's commit, the library versions, the devices (`provenance`), and
the start-up summary of a run (`run_summary`), saved as WORKDIR/summary.json and logged.
"""

from __future__ import annotations

import collections
import importlib.metadata
import os
import platform
import subprocess
import sys

import jax

# Versions always recorded; TensorFlow's only when the run imported it (never imported here).
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy')
IMPORTED_MODULES = ('tensorflow', 'tensorflow_datasets')
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def code_commit(
  directory: str = CHECKOUT, *, short: bool = False, ignore: tuple[str, ...] = ()
) -> str | None:
  """`git rev-parse HEAD` (`short`: its short form) of the checkout holding `directory`, with
  '-dirty' when tracked files differ from it, those under the paths `ignore` left out; None
  outside a git checkout or without git."""

  def git(*args) -> str:
    return subprocess.run(
      ['git', *args], cwd=directory, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()

  try:
    commit = git('rev-parse', *(['--short'] if short else []), 'HEAD')
    excluded = [f':!{path}' for path in ignore]
    changed = git('status', '--porcelain', '--untracked-files=no', '--', '.', *excluded)
  except (OSError, subprocess.SubprocessError):
    return None
  return f'{commit}-dirty' if changed else commit


def versions() -> dict[str, str | None]:
  """{package: version} of python, PACKAGES and the IMPORTED_MODULES this process imported (as
  their `__version__`: TensorFlow's package may be tensorflow, tensorflow-cpu ...)."""

  def version(package):
    try:
      return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      return None

  imported = {
    module: getattr(sys.modules[module], '__version__', None)
    for module in IMPORTED_MODULES
    if module in sys.modules
  }
  return {'python': platform.python_version(), **{p: version(p) for p in PACKAGES}, **imported}


def provenance() -> dict:
  """The code commit, library versions, device kind and count, and process count of this run."""
  return {
    'commit': code_commit(),
    'versions': versions(),
    'platform': jax.default_backend(),
    'device_kind': jax.devices()[0].device_kind,
    'device_count': jax.device_count(),
    'process_count': jax.process_count(),
  }


def parameter_counts(params) -> dict[str, int]:
  """{top-level module: number of parameters} of an nnx.State of parameters (arrays or
  jax.ShapeDtypeStructs), summed over the leaves under each first path component."""
  counts = collections.Counter()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    counts[str(getattr(path[0], 'key', path[0]))] += int(leaf.size)
  return dict(counts)


def run_summary(
  mesh, *, batch_sizes: dict[str, int | None], params, resolved: dict, record: dict
) -> dict:
  """The start-up summary of a run: devices, processes, mesh shape, each stream's global and
  per-device batch (`batch_sizes`: {stream: global size, None when unused}; the batch is split
  over every device of the mesh), parameters per top-level module (`parameter_counts`), the
  resolved lengths and learning rate (`resolved`; the whole config is in config.json) and the
  `provenance` `record`."""
  counts = parameter_counts(params)
  return {
    'devices': {
      'kind': jax.devices()[0].device_kind,
      'count': jax.device_count(),
      'local_count': jax.local_device_count(),
    },
    'process_count': jax.process_count(),
    'mesh': dict(mesh.shape),
    'batch': {
      stream: {'global': size, 'per_device': size // mesh.size}
      for stream, size in batch_sizes.items()
      if size is not None
    },
    'parameters': {**counts, 'total': sum(counts.values())},
    'config': 'config.json',
    'resolved': resolved,
    'provenance': record,
  }
