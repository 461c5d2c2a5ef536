"""Throughput of every method's jitted train step beside a reference step, the whole-data-set
passes outside the step, and the ops a step leans on, in one table.

    python -m benchmarks.throughput                                # digits configs, this CPU
    python -m benchmarks.throughput --json /tmp/throughput.json
    python -m benchmarks.throughput --configs imagenet_10pct --dtype bfloat16 --batch 128 \\
        --methods supervised,suave --sela_n 1281167                # ResNet-50, an accelerator

Rows:
  <method>            its train step, built as `train.train_and_evaluate` builds it (create_method,
                      create_optimizer, state_initializer, state_sharding, train_step), on a fixed
                      batch of random uint8 images on the devices: images/s of the step (labelled
                      + unlabelled images per step over its median time), beside the reference
                      step's, and overhead_pct = 100 (t_method / t_reference - 1), the ratio
                      the median of the rounds' ratios (Timing).
  input img/s         the trainer's input pipeline for the method's config (`pipeline.iterate`:
                      host batches of the real digits splits, sent to the devices), alone, in
                      images/s; the step is input-bound where this is below the step's img/s.
                      Digits only: other data sets are synthetic here (their decoding cost is
                      benchmarks/bench_input.py's).
  <method> pass       `train.make_dataset_pass` (SeLa's self-labelling, MOAM's pseudo-labels):
                      seconds per call, and its share of a run (calls x call / (that + steps x
                      step)).
  sinkhorn, knn_pseudo_labels, self_labels: the ops at the sizes of the ImageNet configs.

The reference step is the same `train_step` of a `ReferenceMethod`: the method's backbone (a
linear classifier on it) called on inputs of the same shapes, in the same mode, as often as the
method calls it, each call of one of three kinds, read from a trace of the method's step
(`backbone_passes`): 'train' (forward and backward with weight gradients: a supervised
cross-entropy), 'forward' (a teacher's or target's: parameters outside the gradient) and
'input_grad' (forward and backward to the input only: VAT's power iterations). The method's own
math (heads, losses, Sinkhorn, kNN, queues, EMA updates) is what the reference lacks.

Timing: `--warmup` steps, then `--repeats` rounds that time `--steps` steps of the method's
step and of the reference's, each ended by `block_until_ready`, in turn, the first of the two
alternating from round to round; images/s from the median time per step, the overhead from the
median of the rounds' time ratios (the two timed back to back, so that a load that comes and
goes weighs on both alike: on 2 CPU cores a step's time varies by 10% from round to round, and
25 rounds give an overhead within about 3 points from run to run). FLOPs per step: XLA's cost
analysis of the compiled step; MFU against `--peak_tflops` or the device's entry in
PEAK_TFLOPS (dense bfloat16).
`--configs` names the config file of each method (configs/<method>/<name>.py: digits,
imagenet_1pct, imagenet_10pct; a method without one is left out); data other than digits is
synthetic, shaped as the config's data set (`SYNTHETIC`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import time
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from semi_ssl import config_base, main as semi_ssl_main, parallel, train
from semi_ssl.data import augment, datasets, pipeline
from semi_ssl.methods import base
from semi_ssl.methods.supervised import Classifier
from semi_ssl.ops import losses

# name -> (config directory, config argument, stage of a staged config).
METHODS = {
  'supervised': ('supervised', None, None),
  'suave': ('suave', None, None),
  'daino': ('daino', None, None),
  'semppl': ('semppl', None, None),
  's4l:rotation': ('s4l', 'rotation', None),
  's4l:exemplar': ('s4l', 'exemplar', None),
  's4l:vat_entmin': ('s4l', 'vat_entmin', None),
  's4l:moam_retrain': ('s4l', 'moam', 'retrain'),
  'sela': ('sela', None, None),
  'simclrv2:pretrain': ('simclrv2', None, 'pretrain'),
}
# Dense bfloat16 TFLOP/s of one chip, by a substring of `device_kind`.
PEAK_TFLOPS = {
  'H100': 989.0,
  'H200': 989.0,
  'A100': 312.0,
  'TPU v4': 275.0,
  'TPU v5 lite': 197.0,
  'TPU v5e': 197.0,
  'TPU v5p': 459.0,
  'TPU v6': 918.0,
}
# Data sets without files here: (train images, image shape of `config`, classes, mean, std).
SYNTHETIC = {
  'imagenet2012': lambda c: (1_281_167, (c.decode_size, c.decode_size, 3), 1000),
  'cifar10': lambda c: (50_000, (32, 32, 3), 10),
  'cifar100': lambda c: (50_000, (32, 32, 3), 100),
}


SYNTHETIC_PASS_BATCHES = 16  # A dataset pass over synthetic data times this many eval batches.
PASS_REPEATS = 3  # A dataset pass's time: the median of this many calls (each is long).


@dataclasses.dataclass(frozen=True)
class Pass:
  """One backbone call of a train step: its kind ('train', 'forward', 'input_grad'), its
  input's shape [B, h, w, C] and its mode (`train=`)."""

  kind: str
  shape: tuple[int, ...]
  train: bool


def load_config(name: str, configs: str, *, batch: int | None, dtype: str | None):
  """The config of METHODS[name] in configs/<method>/<configs>.py (its stage, if staged), with
  `batch` (unlabelled; labelled in the config's ratio) and `model.dtype` overridden; None
  where the method has no such file."""
  directory, arg, stage = METHODS[name]
  path = os.path.join(os.path.dirname(__file__), '..', 'configs', directory, f'{configs}.py')
  if not os.path.isfile(path):
    return None
  config = config_base.load_config_file(path, arg)
  if stage is not None:
    config = dict((c.name, c) for c, _ in semi_ssl_main.stage_plan(config, '/nonexistent'))[stage]
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if batch:
      ratio = config.labelled_batch_size / config.batch_size
      config.labelled_batch_size = max(1, round(batch * ratio))
      config.batch_size = batch
    if dtype:
      config.model.dtype = dtype
  return config


def load_splits(config):
  """The digits data, or a stand-in with the sizes of the config's data set (no images)."""
  if config.dataset not in SYNTHETIC:
    return datasets.load(config)
  num_train, shape, num_classes = SYNTHETIC[config.dataset](config)
  fraction = config.get('label_fraction') or 0.0
  num_labelled = round(fraction * num_train) or config.labels_per_class * num_classes
  return types.SimpleNamespace(
    num_classes=num_classes,
    image_shape=shape,
    mean=(0.5,) * shape[-1],
    std=(0.25,) * shape[-1],
    labelled_labels=np.arange(num_labelled) % num_classes,
    unlabelled_images=range(num_train),  # Only its length is read.
  )


@dataclasses.dataclass
class Setup:
  """A method's train step as the trainer builds it, with its state and a batch."""

  config: object
  splits: object
  method: base.Method
  graphdef: object
  init: Callable
  step: Callable  # train_step with everything but (state, batch) bound, not jitted.
  sharding: object
  mesh: object
  augment_cfg: augment.AugmentConfig


def build(config, splits, method: base.Method | None = None) -> Setup:
  """`config`'s train step (as `train.train_and_evaluate` builds it), for `method` (default:
  `train.create_method`'s)."""
  num_examples = dict(
    unlabelled=len(splits.unlabelled_images), labelled=len(splits.labelled_labels)
  )
  config = config_base.resolve(config, num_examples)
  mesh = parallel.create_mesh(config.mesh.model)
  method = method or train.create_method(config, splits, mesh)
  augment_cfg = augment.augment_config_from(config, splits.mean, splits.std, splits.image_shape)
  graphdef, init, step = train.step_builders(config, method, augment_cfg)
  sharding = train.state_sharding(method, jax.eval_shape(init))
  return Setup(config, splits, method, graphdef, init, step, sharding, mesh, augment_cfg)


def random_batch(setup: Setup, seed: int = 0) -> dict:
  """A batch as `pipeline.iterate` gives it (random images), on the devices."""
  config, splits = setup.config, setup.splits
  rng = np.random.default_rng(seed)
  images = lambda n: rng.integers(0, 256, (n, *splits.image_shape), dtype=np.uint8)
  batch = {
    'labelled': {
      'images': images(config.labelled_batch_size),
      'labels': rng.integers(0, splits.num_classes, config.labelled_batch_size).astype(np.int32),
    }
  }
  if setup.method.uses_unlabelled:
    indices = rng.integers(0, len(splits.unlabelled_images), config.batch_size)
    batch['unlabelled'] = {'images': images(config.batch_size), 'indices': indices.astype(np.int32)}
  return jax.device_put(batch, parallel.batch_sharding(setup.mesh))


def backbone_passes(setup: Setup, batch: dict) -> list[Pass]:
  """Every backbone call of one train step, in order, read from a trace of the step.

  A call is 'train' when the backbone's parameters are the ones the step differentiates,
  'input_grad' when its input is differentiated by a gradient inside the loss (VAT), else
  'forward' (an EMA teacher's parameters in the method state, or a frozen teacher's)."""
  method = setup.method
  backbone_type = type(nnx.eval_shape(lambda: method.create_model(nnx.Rngs(0))).backbone)
  loss, original_call = method.loss, backbone_type.__call__
  passes, outer = [], {}

  def recording_loss(model, state, views, key, step):
    outer['params'] = jax.tree.leaves(nnx.state(model, nnx.Param))[0]._trace
    outer['inputs'] = views['labelled']['views'][0]._trace
    return loss(model, state, views, key, step)

  def recording_call(module, x, *, train):
    kernel = jax.tree.leaves(nnx.state(module, nnx.Param))[0]
    if getattr(x, '_trace', outer['inputs']) not in (outer['inputs'], outer['params']):
      kind = 'input_grad'
    elif getattr(kernel, '_trace', None) is outer['params']:
      kind = 'train'
    else:
      kind = 'forward'
    passes.append(Pass(kind, tuple(x.shape), bool(train)))
    return original_call(module, x, train=train)

  method.loss, backbone_type.__call__ = recording_loss, recording_call
  try:
    jax.make_jaxpr(setup.step)(jax.eval_shape(setup.init), batch)
  finally:
    del method.loss
    backbone_type.__call__ = original_call
  return passes


class ReferenceMethod(base.Method):
  """The backbone and a linear classifier, called as `passes` says, on inputs of the same
  shapes taken from the step's views: the reference a method's step is measured against."""

  def __init__(self, method: base.Method, passes: list[Pass]):
    super().__init__(method.config, method.data, method.mesh)
    self.uses_unlabelled = method.uses_unlabelled
    self.passes = passes

  def create_model(self, rngs):
    return Classifier(
      base.create_backbone(self.config, self.data, rngs), self.data.num_classes, rngs
    )

  def loss(self, model, state, batch, key, step):
    del key, step
    all_views = [*batch['labelled']['views'], *batch.get('unlabelled', {}).get('views', [])]
    labels = batch['labelled']['labels']
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    frozen = lambda: nnx.merge(graphdef, jax.lax.stop_gradient(params), rest, copy=True)
    terms, outputs = [], []
    for index, p in enumerate(self.passes):
      x = _inputs(all_views, p.shape) + index  # Distinct inputs: XLA merges no two passes.
      if p.kind == 'train':
        targets = jax.nn.one_hot(jnp.resize(labels, p.shape[:1]), self.data.num_classes)
        terms.append(jnp.mean(losses.cross_entropy(model(x, train=p.train), targets)))
      elif p.kind == 'forward':
        outputs.append(jnp.mean(frozen()(x, train=p.train)))
      else:
        grad = jax.grad(lambda x: jnp.mean(frozen()(x, train=p.train)))(x)
        outputs.append(jnp.mean(grad))
    loss = jnp.mean(jnp.stack(terms)) if terms else jnp.zeros(())
    return loss, (state, {'outputs': jnp.sum(jnp.stack(outputs)) if outputs else jnp.zeros(())})

  def predict(self, model, images):
    return model(images, train=False)


def _inputs(views: list[jax.Array], shape: tuple[int, ...]) -> jax.Array:
  """[B, h, w, C] of `shape`: the rows of the views of that image size, repeated as needed (or
  the first view resized, where no view has that size)."""
  same = [v for v in views if v.shape[1:] == shape[1:]]
  if not same:
    same = [jax.image.resize(views[0], (views[0].shape[0], *shape[1:]), 'bilinear')]
  return jnp.resize(jnp.concatenate(same), shape)


def compile_step(setup: Setup, batch: dict):
  """(compiled step, fresh state, FLOPs per step or None)."""
  replicated = parallel.replicated(setup.mesh)
  step = jax.jit(setup.step, out_shardings=(setup.sharding, replicated), donate_argnums=0)
  state = jax.jit(setup.init, out_shardings=setup.sharding)()
  compiled = step.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = (cost or {}).get('flops')
  return compiled, state, (float(flops) if flops and flops > 0 else None)


def time_steps(steps_and_states: list, batch, *, steps: int, repeats: int, warmup: int):
  """([seconds per step of each (compiled step, state) in each round] [N][repeats], [their last
  states]: a step donates the state it is given): `warmup` steps of each, then `repeats` rounds
  in which each is timed over `steps` steps in turn, starting one place later each round."""
  compiled = [c for c, _ in steps_and_states]
  states = [s for _, s in steps_and_states]
  times = [[] for _ in compiled]
  for repeat in range(-1, repeats):
    for offset in range(len(compiled)):
      i = (max(repeat, 0) + offset) % len(compiled)
      start = time.perf_counter()
      for _ in range(max(warmup, 1) if repeat < 0 else steps):
        states[i], metrics = compiled[i](states[i], batch)
      jax.block_until_ready((states[i], metrics))
      if repeat >= 0:
        times[i].append((time.perf_counter() - start) / steps)
  return times, states


def peak_tflops(override: float | None) -> float | None:
  """The chip's dense bfloat16 peak: `override`, else PEAK_TFLOPS's (None on a CPU)."""
  if override:
    return override
  kind = jax.devices()[0].device_kind
  return next((peak for name, peak in PEAK_TFLOPS.items() if name.lower() in kind.lower()), None)


def images_per_step(setup: Setup) -> int:
  config = setup.config
  return config.labelled_batch_size + (config.batch_size if setup.method.uses_unlabelled else 0)


def summarise(passes: list[Pass]) -> dict[str, int]:
  """{kind: images through the backbone per step}."""
  images = {}
  for p in passes:
    images[p.kind] = images.get(p.kind, 0) + p.shape[0]
  return images


def method_rows(name: str, setup: Setup, args, peak: float | None) -> list[dict]:
  """The method's row, and its dataset pass's when it makes one."""
  batch = random_batch(setup)
  passes = backbone_passes(setup, batch)
  reference = build(setup.config, setup.splits, ReferenceMethod(setup.method, passes))
  timing = dict(steps=args.steps, repeats=args.repeats, warmup=args.warmup)
  compiled, state, flops = compile_step(setup, batch)
  ref_compiled, ref_state, ref_flops = compile_step(reference, batch)
  (times, ref_times), (state, _) = time_steps(
    [(compiled, state), (ref_compiled, ref_state)], batch, **timing
  )
  seconds, ref_seconds = statistics.median(times), statistics.median(ref_times)
  ratio = statistics.median(t / r for t, r in zip(times, ref_times))
  images = images_per_step(setup)
  input_seconds = input_seconds_per_batch(setup, steps=args.steps * args.repeats)
  row = dict(
    method=name,
    images_per_s=images / seconds,
    input_images_per_s=input_seconds and images / input_seconds,
    reference_images_per_s=images / ref_seconds,
    overhead_pct=100 * (ratio - 1),
    backbone_passes=summarise(passes),
    backbone_calls=[dataclasses.asdict(p) for p in passes],
    images_per_step=images,
    step_ms=1e3 * seconds,
    reference_step_ms=1e3 * ref_seconds,
    flops_per_step=flops,
    reference_flops_per_step=ref_flops,
    flops_overhead_pct=100 * (flops / ref_flops - 1) if flops and ref_flops else None,
    mfu_pct=100 * flops / seconds / (peak * 1e12) if flops and peak else None,
    dtype=setup.config.model.dtype,
    crop=setup.config.augment.global_size,
    backbone=setup.config.model.backbone,
  )
  rows = [row]
  if setup.method.dataset_pass_steps():
    rows.append(dataset_pass_row(name, setup, state, seconds, args))
  return rows


def input_seconds_per_batch(setup: Setup, steps: int) -> float | None:
  """Seconds per batch of the trainer's input pipeline alone, on the config's real data (None
  for synthetic data sets): `steps` batches after one, each waited for on the devices."""
  config = setup.config
  if config.dataset in SYNTHETIC:
    return None
  batches = pipeline.iterate(
    setup.splits,
    setup.mesh,
    start_step=0,
    num_steps=steps + 1,
    seed=0,
    labelled_batch_size=config.labelled_batch_size,
    batch_size=config.batch_size if setup.method.uses_unlabelled else None,
  )
  jax.block_until_ready(next(batches))
  start = time.perf_counter()
  for batch in batches:
    jax.block_until_ready(batch)
  return (time.perf_counter() - start) / steps


def dataset_pass_row(name: str, setup: Setup, state, step_seconds: float, args) -> dict:
  """The seconds of one `train.make_dataset_pass` call, timed over `--pass_images` images at
  most (synthetic data: SYNTHETIC_PASS_BATCHES eval batches by default) and scaled linearly to
  the whole set, and the share of a run its calls take."""
  config, splits, method = setup.config, setup.splits, setup.method
  total = len(splits.unlabelled_images)
  synthetic = isinstance(splits.unlabelled_images, range)
  count = min(total, args.pass_images or (SYNTHETIC_PASS_BATCHES * config.eval.batch_size))
  count = count if synthetic or args.pass_images else total
  if synthetic:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, *splits.image_shape), dtype=np.uint8)
  else:
    images = np.asarray(splits.unlabelled_images[:count])
  preprocess = lambda x: augment.eval_view(
    x, config.augment.global_size, splits.mean, splits.std, config.eval.crop_fraction
  )
  run = train.make_dataset_pass(
    method,
    setup.graphdef,
    images,
    setup.mesh,
    preprocess=preprocess,
    batch_size=config.eval.batch_size,
    method_state_sharding=setup.sharding.method_state,
  )
  jax.block_until_ready(run(state))  # Compiles.
  times = []
  for _ in range(PASS_REPEATS):
    start = time.perf_counter()
    jax.block_until_ready(run(state))
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times) * total / count
  calls = len(method.dataset_pass_steps())
  run_seconds = calls * seconds + config.num_steps * step_seconds
  return dict(
    method=f'{name} pass',
    images_per_s=total / seconds,
    seconds_per_call=seconds,
    calls_per_run=calls,
    run_share_pct=100 * calls * seconds / run_seconds,
    images_timed=count,
    images_per_call=total,
  )


def micro_rows(args) -> list[dict]:
  """sinkhorn, knn_pseudo_labels and SeLa's self_labels at the ImageNet configs' sizes."""
  from benchmarks import bench_knn, bench_sela, bench_sinkhorn
  from semi_ssl.ops.knn import knn_pseudo_labels
  from semi_ssl.ops.sinkhorn import sinkhorn

  rows = []
  suave = load_config('suave', 'imagenet_10pct', batch=None, dtype=None)
  num_scores = suave.batch_size + (suave.suave.queue_size)
  num_prototypes = suave.suave.num_prototypes or 1000
  scores = jax.random.uniform(jax.random.key(0), (num_scores, num_prototypes), minval=-1, maxval=1)
  solve = jax.jit(
    functools.partial(
      sinkhorn, epsilon=suave.suave.sinkhorn_epsilon, num_iters=suave.suave.sinkhorn_iters
    )
  )
  ms = bench_sinkhorn.median_ms(solve, scores)
  rows.append(dict(method='sinkhorn', size=f'N {num_scores}, K {num_prototypes}', ms=ms))

  semppl = load_config('semppl', 'imagenet_10pct', batch=None, dtype=None)
  hp = semppl.semppl
  num_queries = semppl.batch_size * semppl.augment.num_global_crops
  rng = np.random.default_rng(0)
  queries = rng.normal(size=(num_queries, hp.embed_dim)).astype(np.float32)
  keys = rng.normal(size=(hp.queue_size, hp.embed_dim)).astype(np.float32)
  key_labels = rng.integers(0, 1000, hp.queue_size).astype(np.int32)
  vote = jax.jit(
    functools.partial(
      knn_pseudo_labels, k=hp.knn_k, num_classes=1000, approximate=hp.knn_approximate
    )
  )
  ms = bench_knn.median_ms(lambda: vote(queries, keys, key_labels))
  size = f'{num_queries} queries, {hp.queue_size} keys, D {hp.embed_dim}, k {hp.knn_k}'
  rows.append(dict(method='knn_pseudo_labels', size=size, ms=ms))

  sela = load_config('sela', 'imagenet_10pct', batch=None, dtype=None).sela
  solve_args = argparse.Namespace(
    n=[args.sela_n],
    k=sela.num_clusters,
    lam=sela.lam,
    tol=sela.tol,
    max_iters=sela.max_iters,
    logit_scale=1.0,
    devices=1,
  )
  solved = bench_sela.solve_once(solve_args)
  rows.append(
    dict(
      method='self_labels',
      size=f'N {args.sela_n}, K {sela.num_clusters}, one of {sela.num_heads} heads',
      ms=1e3 * solved['seconds'] if 'seconds' in solved else None,
      memory_gib=solved['needed_gib'],
      iterations=solved.get('iters'),
    )
  )
  return rows


def run(args) -> dict:
  """The table as a dict {'device', 'configs', 'methods': [rows], 'worst_overhead_pct', ...}."""
  peak = peak_tflops(args.peak_tflops)
  rows = []
  for name in args.methods.split(','):
    config = load_config(name, args.configs, batch=args.batch, dtype=args.dtype)
    if config is not None:
      config_splits = load_splits(config)
      rows += method_rows(name, build(config, config_splits), args, peak)
  if args.micro:
    rows += micro_rows(args)
  overheads = [r['overhead_pct'] for r in rows if 'overhead_pct' in r]
  input_bound = [
    r['method'] for r in rows if (r.get('input_images_per_s') or np.inf) < r.get('images_per_s', 0)
  ]
  device = jax.devices()[0]
  return dict(
    device=f'{len(jax.devices())} x {device.platform} ({device.device_kind})',
    configs=args.configs,
    peak_tflops=peak,
    timing=dict(steps=args.steps, repeats=args.repeats, warmup=args.warmup),
    methods=rows,
    worst_overhead_pct=max(overheads) if overheads else None,
    input_bound=input_bound,
  )


def format_table(result: dict) -> str:
  lines = [
    f'{result["device"]}, configs {result["configs"]}, peak {result["peak_tflops"]} TFLOP/s',
    f'{"row":<22}{"img/s":>9}{"ref img/s":>10}{"overhead":>9}{"GFLOP":>9}{"FLOP+":>7}{"MFU":>6}'
    f'{"input img/s":>12}  backbone images per step / notes',
  ]
  number = lambda x, spec: format(x, spec) if x is not None else '-'
  for r in result['methods']:
    if 'overhead_pct' in r:
      passes = ', '.join(f'{kind} {n}' for kind, n in r['backbone_passes'].items())
      gflops = r['flops_per_step'] and r['flops_per_step'] / 1e9
      lines.append(
        f'{r["method"]:<22}{r["images_per_s"]:>9.0f}{r["reference_images_per_s"]:>10.0f}'
        f'{r["overhead_pct"]:>8.1f}%{number(gflops, ".1f"):>9}'
        f'{number(r["flops_overhead_pct"], ".1f"):>6}%{number(r["mfu_pct"], ".1f"):>6}'
        f'{number(r["input_images_per_s"], ".0f"):>12}  {passes}'
      )
    elif 'seconds_per_call' in r:
      lines.append(
        f'{r["method"]:<22}{r["images_per_s"]:>9.0f}{"":>52}  {r["seconds_per_call"]:.2f} s '
        f'per call, {r["calls_per_run"]} per run: {r["run_share_pct"]:.1f}% of a run'
      )
    else:
      lines.append(f'{r["method"]:<22}{number(r["ms"], ".1f"):>9} ms{"":>50}  {r["size"]}')
  lines.append(f'worst overhead: {number(result["worst_overhead_pct"], ".1f")}% (target <= 10%)')
  bound = ', '.join(result['input_bound']) or 'none'
  lines.append(f"input-bound steps (input img/s below the step's): {bound}")
  return '\n'.join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--methods', default=','.join(METHODS), help='Comma-separated METHODS.')
  parser.add_argument('--configs', default='digits', help='digits, imagenet_1pct, imagenet_10pct')
  parser.add_argument('--batch', type=int, help='Unlabelled batch (labelled: config ratio).')
  parser.add_argument('--dtype', help="The backbone's compute dtype, e.g. bfloat16.")
  parser.add_argument('--steps', type=int, default=5, help='Steps per timing.')
  parser.add_argument('--repeats', type=int, default=25, help='Timing rounds (medians).')
  parser.add_argument('--warmup', type=int, default=2, help='Steps before timing.')
  parser.add_argument('--peak_tflops', type=float, help="The chip's peak, for MFU.")
  parser.add_argument(
    '--pass_images',
    type=int,
    default=0,
    help='Images a dataset pass times (0: all; synthetic: 16 eval batches).',
  )
  parser.add_argument('--no_micro', dest='micro', action='store_false', help='No op rows.')
  parser.add_argument('--sela_n', type=int, default=20_000, help="self_labels' N (1281167).")
  parser.add_argument('--json', help='Write the table there as JSON.')
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  result = run(args)
  print(format_table(result))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == '__main__':
  main()
