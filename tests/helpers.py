"""What the test modules share: tiny configs, the saved checkpoints of a workdir, and the main
command in a subprocess. (Fixtures are in conftest.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import ml_collections

import conftest
from semi_ssl import checkpoint, config_base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a tiny run of each method changes in the base config, beyond the settings all tiny runs
# share; the rest of its section comes from configs/<method>/digits.py. Sizes shrunk: narrow
# heads, a queue of 8 rows per device (two steps of 2 x 16 labelled projections).
_TINY = {
  'supervised': {},
  'suave': dict(augment=dict(num_local_crops=1), suave=dict(projector_hidden_dim=16, embed_dim=8)),
  'daino': dict(augment=dict(num_local_crops=1), daino=dict(projector_hidden_dim=16, embed_dim=8)),
  'simclrv2': dict(augment=dict(num_local_crops=0), simclrv2=dict(embed_dim=8)),
  # Exemplar copies: the 2 global and 1 local views of each image.
  's4l': dict(
    augment=dict(num_local_crops=1), s4l=dict(exemplar_embed_dim=8, num_exemplar_copies=3)
  ),
  # Head 0 with 2 clusters beyond digits' 10 classes; relabelled before steps 0 and 2.
  'sela': dict(
    augment=dict(num_local_crops=1), sela=dict(num_heads=2, num_clusters=12, num_label_updates=3)
  ),
  'semppl': dict(
    augment=dict(num_local_crops=1),
    semppl=dict(
      mlp_hidden_dim=16,
      embed_dim=8,
      queue_size=64,
      knn_k=3,
      num_semantic_positives=2,
      semantic_warmup_steps=2,
    ),
  ),
}


def tiny_config(method: str = 'supervised', **overrides) -> ml_collections.ConfigDict:
  """`method` on digits (5 labels per class) with a quarter-width tiny ResNet, 16 + 16 images
  and 4 steps, evaluated and saved every 2; 2 global 8x8 views (and, but for the supervised
  baseline, 1 local 6x6 view). `overrides` update the config, nested dicts key by key
  (e.g. `daino=dict(teacher_momentum=0.9)`)."""
  c = config_base.get_base_config()
  c.method = method
  c.labels_per_class = 5
  c.labelled_batch_size = 16
  c.batch_size = 16
  c.num_steps = 4
  c.log_every = 2
  c.eval_every = 2
  c.checkpoint_every = 2
  c.model.width = 0.25
  section = method if method in _TINY else 'supervised'  # Test methods extend the baseline.
  c[section] = config_base.load_config_file(f'{REPO}/configs/{section}/digits.py')[section]
  c.update(_TINY[section])
  c.update(overrides)
  return c


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of the complete checkpoints in `workdir`, ascending."""
  directory = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
  return (
    sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
  )


def saved_state(workdir: str, step: int) -> dict:
  """The train state saved at `step`, as the nested dict of arrays on disk ('step', 'params',
  'model_state', 'opt_state', 'method_state', ...), read onto one device."""
  return checkpoint.read_state(os.path.join(workdir, checkpoint.CHECKPOINT_DIR, str(step), 'state'))


def cpu_env(num_devices: int = 1) -> dict[str, str]:
  """The environment of a subprocess on `num_devices` CPU devices, compiling as the tests do."""
  return dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS=(f'--xla_force_host_platform_device_count={num_devices} {conftest.FAST_COMPILE}'),
  )


def start_main(
  workdir,
  flags: list[str],
  shell_prefix: str = '',
  entry: tuple[str, ...] = ('-m', 'semi_ssl.main'),
) -> subprocess.Popen:
  """The main command (or Python with the arguments `entry`) in a subprocess on one CPU
  device, with Ctrl-C handled as in a terminal (also where the tests run with SIGINT ignored,
  as a shell's background job does); `shell_prefix` (e.g. 'ulimit -f 20;') runs before it."""
  command = [sys.executable, *entry, f'--workdir={workdir}', *flags]
  if shell_prefix:
    command = ['bash', '-c', f'{shell_prefix} exec "$@"', 'bash', *command]
  return subprocess.Popen(
    command,
    cwd=REPO,
    env=cpu_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
  """(exit status, stdout, stderr) of `process` once it ends."""
  out, err = process.communicate(timeout=timeout)
  return process.returncode, out, err


def wait_for(condition, process: subprocess.Popen, timeout: float = 240) -> None:
  """Waits until `condition()` holds; fails with `process`'s stderr if it ends first, and after
  `timeout` seconds (a hung run)."""
  deadline = time.time() + timeout
  while not condition():
    assert process.poll() is None, finish(process)[2][-3000:]
    assert time.time() < deadline, 'timed out'
    time.sleep(0.05)
