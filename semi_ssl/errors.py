"""Ways a run stops that are not bugs: main prints their one-line message, not a stack trace."""


class UserError(ValueError):
  """Bad input or environment (checkpoint, disk, data, divergence); the message names the fix."""


class CheckpointWriteError(UserError):
  """A checkpoint could not be written (full or read-only disk); earlier checkpoints are intact."""


class Preempted(Exception):
  """Not a failure: a preemption notice arrived, a checkpoint was saved and the run stopped."""


def require(ok: bool, message: str) -> None:
  """Raises ValueError(message) unless `ok`: for config checks, whose message names the key
  and the fix (main prints it as a one-line config error)."""
  if not ok:
    raise ValueError(message)
