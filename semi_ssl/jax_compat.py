"""Linear-time tracing on jax 0.10 (later releases lacking the patched method are untouched).

flax's BatchNorm probes `tracer.sharding` at each update of its running statistics; on jax
0.10 the message of the error behind that probe (`DynamicJaxprTracer._origin_msg`) walks the
whole trace so far, so tracing a step is quadratic in its size: 6 minutes to trace Suave's
ImageNet step on a CPU before anything compiles, 13 s instead of 3 s for a tiny Daino step.
jax-ml/jax pull request 40041 drops that walk upstream. What is lost here: errors raised while
tracing no longer name the traced function's argument an offending value came from.
"""

from __future__ import annotations


def linear_time_tracing() -> None:
  """Makes the origin part of tracer error messages empty (see the module docstring)."""
  from jax._src.interpreters import partial_eval  # pylint: disable=import-outside-toplevel

  if hasattr(partial_eval.DynamicJaxprTracer, '_origin_msg'):
    partial_eval.DynamicJaxprTracer._origin_msg = lambda self: ''  # pylint: disable=protected-access
