"""Test setup: 8 virtual CPU devices, so sharded code runs as on a pod slice."""
import os

# Tests are bound by XLA compile time, not run time: no LLVM optimisation (compiles 2-3x faster).
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Identical programs (the same tiny model in several tests and subprocesses) compile once.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"))
