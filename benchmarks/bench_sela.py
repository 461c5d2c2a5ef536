"""Time and peak memory of one SeLa self-labelling step: `sinkhorn.self_labels` (the function
`methods/sela.py` calls per head) on random softmax rows P [N, K], one subprocess per size.

    python -m benchmarks.bench_sela --n 100000 1281167 --k 1000          # CPU, ImageNet's N
    python -m benchmarks.bench_sela --n 1281167 --k 3000 --devices 1     # a GPU

Memory: what XLA's buffer assignment gives the compiled solve (arguments + temporaries +
outputs, summed over the devices), known before anything runs. Time: one solve after
compilation (each head solves in turn, so `--heads` multiplies it), run only where that
memory and P's generation fit in the machine's available memory (else the row says so).
`--devices` > 1 on CPU splits N over virtual devices.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def solve_once(args: argparse.Namespace) -> dict:
  if args.devices > 1:
    os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={args.devices}'
  import jax
  import jax.numpy as jnp
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  from semi_ssl.ops.sinkhorn import self_labels

  mesh = Mesh(jax.devices()[: args.devices], ('data',))
  rows = NamedSharding(mesh, P('data'))
  shape = jax.ShapeDtypeStruct((args.n[0], args.k), jnp.float32, sharding=rows)
  solve = jax.jit(lambda p: self_labels(p, lam=args.lam, tol=args.tol, max_iters=args.max_iters))
  compiled = solve.lower(shape).compile()
  memory = compiled.memory_analysis()
  needed = memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
  row = dict(needed_gib=needed * args.devices / 2**30, platform=jax.devices()[0].platform)
  # P's generation (normal draws, softmax) holds about three copies of P at once, all but P
  # freed before the solve.
  if max(needed * args.devices, 3 * args.n[0] * args.k * 4) > _available_bytes():
    return row
  probs = jax.jit(
    lambda key: jax.nn.softmax(args.logit_scale * jax.random.normal(key, (args.n[0], args.k)), -1),
    out_shardings=rows,
  )(jax.random.key(0))
  start = time.perf_counter()
  out = jax.block_until_ready(compiled(probs))
  seconds = time.perf_counter() - start
  return dict(row, seconds=seconds, iters=int(out.num_iters), error=float(out.error))


def _available_bytes() -> int:
  """The machine's available memory (Linux's MemAvailable), or its total memory elsewhere."""
  try:
    with open('/proc/meminfo') as f:
      return next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable'))
  except (OSError, StopIteration):
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--n', type=int, nargs='+', default=[100_000, 1_281_167])
  parser.add_argument('--k', type=int, default=1000)
  parser.add_argument('--heads', type=int, default=1)
  parser.add_argument('--lam', type=float, default=25.0)
  parser.add_argument('--tol', type=float, default=0.1)
  parser.add_argument('--max_iters', type=int, default=10_000)
  parser.add_argument('--logit_scale', type=float, default=1.0)
  parser.add_argument('--devices', type=int, default=1)
  parser.add_argument('--one', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    print(json.dumps(solve_once(args)))
    return
  print(
    f'K {args.k}, lambda {args.lam}, tol {args.tol}, heads {args.heads}, devices {args.devices}'
  )
  print(f'{"N":>9} {"GiB":>7} {"iters":>6} {"error":>8} {"s/head":>8} {"s all":>8}')
  for n in args.n:
    command = [sys.executable, '-m', 'benchmarks.bench_sela', '--one', '--n', str(n)]
    for key in ('k', 'heads', 'lam', 'tol', 'max_iters', 'logit_scale', 'devices'):
      command += [f'--{key}', str(getattr(args, key))]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    if 'seconds' not in row:
      print(f'{n:>9} {row["needed_gib"]:>7.2f}  not run: more than the available memory')
      continue
    print(
      f'{n:>9} {row["needed_gib"]:>7.2f} {row["iters"]:>6} {row["error"]:>8.3g} '
      f'{row["seconds"]:>8.2f} {row["seconds"] * args.heads:>8.2f}  ({row["platform"]})'
    )


if __name__ == '__main__':
  main()
