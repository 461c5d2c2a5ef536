"""Stop notices: SIGTERM (a scheduler's preemption or time-limit warning) and Ctrl-C (SIGINT).

    notices.install()                  # main, at start-up: before JAX, data or compiling
    notice = notices.watch(ckpt_dir)   # the train loop; notice.reached(step) at each step
    notice.close()

The first notice stops the run at the next step boundary, with a save, or before the first
step when it came while the run was loading or compiling; a second Ctrl-C stops it at once,
without saving. One process: a signal handler records the notice. Several: JAX's distributed
runtime takes SIGTERM over when it starts, and `reached_preemption_sync_point` names the same
step on every process; a notice that came before, and each Ctrl-C, is handed on to it as
SIGTERM. No JAX import here, so that main installs the handlers before JAX starts.
"""

from __future__ import annotations

import os
import signal

_installed = None  # The Notice that `install` set up for the whole process, if any.


class Notice:
  """The stop notices this process received; `reached` says when the run stops."""

  def __init__(self):
    self.signals: list[int] = []  # Received, in order.
    self.checkpoint_dir = None  # Of the stage that trains: named by a second Ctrl-C.
    self.jax_decides = False  # Several processes: JAX holds SIGTERM and picks the step.
    self._previous = {}

  def install(self) -> None:
    """Handles SIGTERM, and SIGINT unless it is ignored (a shell's background job)."""
    self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)

  def uninstall(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def hand_sigterm_to_jax(self) -> None:
    """After `jax.distributed.initialize` (which installed JAX's own SIGTERM handler)."""
    self.jax_decides = True
    if self.signals:
      os.kill(os.getpid(), signal.SIGTERM)

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.interrupted:
      os.write(2, f'Interrupted again: {self._last_checkpoint()}\n'.encode())
      os._exit(130)  # pylint: disable=protected-access  # 128 + SIGINT, as a shell reports it.
    self.signals.append(signum)
    if signum == signal.SIGINT:
      os.write(
        2,
        b'Ctrl-C: stopping at the next step boundary, after a save (press it again to '
        b'stop at once, without saving).\n',
      )
      if self.jax_decides:
        os.kill(os.getpid(), signal.SIGTERM)

  def _last_checkpoint(self) -> str:
    directory = self.checkpoint_dir
    if directory is None:
      return 'stopped before training started; nothing was lost.'
    try:
      import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

      steps = ocp.utils.checkpoint_steps(directory)
    except Exception:  # pylint: disable=broad-except  # The process exits now whatever happens.
      return f'stopped without saving; the last complete checkpoint is in {directory}.'
    last = f'step {max(steps)} in {directory}' if steps else f'none yet in {directory}'
    return f'stopped without saving; the last complete checkpoint is {last}.'

  @property
  def interrupted(self) -> bool:
    """Whether Ctrl-C was pressed (the run then exits 130, as interrupted programs do)."""
    return signal.SIGINT in self.signals

  @property
  def name(self) -> str:
    return 'Interrupted' if self.interrupted else 'Preempted'

  def stops_before_training(self) -> bool:
    """Whether a notice came before the first step (one process; several wait for JAX's step)."""
    return bool(self.signals) and not self.jax_decides

  def reached(self, step: int) -> bool:
    """Whether the run saves and stops after `step`."""
    if self.jax_decides:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

      return multihost_utils.reached_preemption_sync_point(step)
    return bool(self.signals)

  def close(self) -> None:
    """The stage's training ended; a Notice that `watch` installed is uninstalled."""
    self.checkpoint_dir = None
    if self is not _installed:
      self.uninstall()


def install() -> Notice:
  """Handles stop notices for the rest of the process: main, first thing after flag parsing."""
  global _installed  # pylint: disable=global-statement
  _installed = Notice()
  _installed.install()
  return _installed


def watch(checkpoint_dir) -> Notice:
  """The Notice `install` set up, now naming `checkpoint_dir`; without one (train_and_evaluate
  called from Python), one installed until `close`, or left to JAX with several processes."""
  notice = _installed or Notice()
  if notice is not _installed:
    import jax  # pylint: disable=import-outside-toplevel

    if jax.process_count() > 1:
      notice.jax_decides = True
    else:
      try:
        notice.install()
      except ValueError:  # Not the main thread: leave signals to the caller.
        pass
  notice.checkpoint_dir = checkpoint_dir
  return notice
