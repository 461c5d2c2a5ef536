"""Test setup: 8 virtual CPU devices, so sharded code runs as on a pod slice; the fixtures the
test modules share. (Their shared functions are in helpers.py.)"""

import os

import pytest

# Tests are bound by XLA compile time, not run time: no LLVM optimisation (compiles 2-3x faster)
# and XLA's older CPU fusion code generator (the train steps of the tiny configs compile 2-3x
# faster again, and run as fast; jax 0.10).
FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'
os.environ.setdefault('XLA_FLAGS', f'--xla_force_host_platform_device_count=8 {FAST_COMPILE}')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Identical programs (the same tiny model in several tests and subprocesses) compile once.
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR',
  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.pytest_cache', 'jax'),
)
# A cache with a size limit reads and writes under a file lock: the pytest-xdist workers and the
# subprocesses share it without reading an entry another process is still writing.
os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(16 << 30))

# As main does: tracing time linear in the program (flax BatchNorm on jax 0.10; see the module).
from semi_ssl import jax_compat  # noqa: E402  (after the environment above, which jax reads)

jax_compat.linear_time_tracing()


@pytest.fixture
def gcs_on_disk(tmp_path, monkeypatch):
  """gs://BUCKET/X is stored at DIR/BUCKET/X, DIR the directory returned: no bucket can be
  reached offline, so the three layers that serve gs:// URLs (epath, which Orbax uses too;
  Orbax's TensorStore GCS driver; tf.summary) get the local disk underneath, while the URL
  still takes their gs:// code paths (Orbax: commit files instead of renames)."""
  import tensorflow as tf
  from etils.epath import backend, gpath
  from orbax.checkpoint._src.path import gcs_utils

  root = tmp_path / 'gcs'

  def local(arg):
    is_url = isinstance(arg, (str, os.PathLike)) and os.fspath(arg).startswith('gs://')
    return str(root / os.fspath(arg)[len('gs://') :]) if is_url else arg

  class LocalGcs:
    def __getattr__(self, name):
      method = getattr(backend.os_backend, name)
      return lambda *args, **kwargs: method(
        *map(local, args), **{k: local(v) for k, v in kwargs.items()}
      )

  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)  # Else tf.io.gfile serves gs://.
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, 'gs', LocalGcs())
  monkeypatch.setattr(
    gcs_utils, 'get_kvstore_for_gcs', lambda path: {'driver': 'file', 'path': local(path)}
  )
  # Orbax asks google-cloud-storage whether the bucket has a hierarchical namespace.
  monkeypatch.setattr(gcs_utils, 'is_hierarchical_namespace_enabled', lambda path: False)
  create_writer = tf.summary.create_file_writer
  monkeypatch.setattr(
    tf.summary,
    'create_file_writer',
    lambda logdir, **kwargs: create_writer(local(logdir), **kwargs),
  )
  return root
