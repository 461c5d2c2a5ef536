"""Ways a run stops that are not bugs: main prints their one-line message, not a stack trace."""

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar('T')


class UserError(ValueError):
  """Bad input or environment (checkpoint, disk, data, divergence); the message names the fix."""


class CheckpointWriteError(UserError):
  """A checkpoint could not be written (full or read-only disk); earlier checkpoints are intact."""


class Preempted(Exception):
  """Not a failure: a preemption notice arrived, a checkpoint was saved and the run stopped."""


def exit_on_user_error(function: Callable[..., T], *args) -> T:
  """`function(*args)`, or, where it raises UserError, the process's exit with its one-line
  message: for command-line tools."""
  try:
    return function(*args)
  except UserError as error:
    sys.exit(f'error: {error}')


def require(ok: bool, message: str) -> None:
  """Raises ValueError(message) unless `ok`: for config checks, whose message names the key
  and the fix (main prints it as a one-line config error)."""
  if not ok:
    raise ValueError(message)
