"""benchmarks/throughput.py: the reference step's backbone passes, the configs it reads, and
one tiny run of its main function (times are not checked)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp

from benchmarks import throughput
from helpers import tiny_config


def _method_and_reference(config):
  setup = throughput.build(config, throughput.load_splits(config))
  batch = throughput.random_batch(setup)
  passes = throughput.backbone_passes(setup, batch)
  reference = throughput.build(
    setup.config, setup.splits, throughput.ReferenceMethod(setup.method, passes)
  )
  return setup, reference, batch, passes


def test_reference_makes_daino_s_passes_its_teacher_forward_only():
  config = tiny_config('daino')
  setup, reference, batch, passes = _method_and_reference(config)
  # The student sees 16 labelled and 16 unlabelled images in 2 global 8x8 views and one
  # 6x6 local view; the EMA teacher the 2 global views of the unlabelled ones, forward only.
  assert throughput.summarise(passes) == {'train': 3 * 32, 'forward': 2 * 16}
  assert sorted({p.shape[1] for p in passes}) == [6, 8]
  assert throughput.backbone_passes(reference, batch) == passes


def test_reference_makes_vat_s_passes_with_the_same_flops():
  config = tiny_config('s4l', s4l=dict(variant='vat_entmin'))
  setup, reference, batch, passes = _method_and_reference(config)
  kinds = [p.kind for p in passes]
  assert kinds.count('input_grad') == config.s4l.vat_power_iterations
  assert kinds[-1] == 'train'  # The perturbed images, after the views (one call per size).
  assert throughput.backbone_passes(reference, batch) == passes
  # Distinct inputs per pass: XLA merges none of the reference's passes (it did, halving them).
  flops = [throughput.compile_step(s, batch)[2] for s in (setup, reference)]
  assert abs(flops[1] / flops[0] - 1) < 0.1, flops


def test_imagenet_configs_trace_resnet50_at_their_crops_in_bfloat16():
  config = throughput.load_config('suave', 'imagenet_10pct', batch=16, dtype='bfloat16')
  assert (config.batch_size, config.labelled_batch_size) == (16, 8)  # The config's 2:1 ratio.
  assert (config.model.backbone, config.model.dtype) == ('resnet50', 'bfloat16')
  splits = throughput.load_splits(config)
  assert len(splits.unlabelled_images) == 1_281_167
  setup = throughput.build(config, splits)
  passes = throughput.backbone_passes(setup, throughput.random_batch(setup))
  sizes = {p.shape[1] for p in passes}
  assert sizes == {config.augment.global_size, config.augment.local_size}


def test_staged_methods_time_the_named_stage():
  pretrain = throughput.load_config('simclrv2:pretrain', 'digits', batch=None, dtype=None)
  assert pretrain.simclrv2.stage == 'pretrain'
  retrain = throughput.load_config('s4l:moam_retrain', 'digits', batch=None, dtype=None)
  assert (retrain.s4l.variant, retrain.s4l.stage) == ('moam', 'retrain')
  assert throughput.load_config('sela', 'imagenet_1pct', batch=None, dtype=None) is None


def test_timing_rounds_alternate_which_step_goes_first():
  """The method's and the reference's steps take turns at going first, so that neither is
  always timed in the wake of the other; one time per round each."""
  calls = []

  def step(name):
    return lambda state, batch: (calls.append(name) or state, jnp.zeros(()))

  times, states = throughput.time_steps(
    [(step('method'), 1), (step('reference'), 2)], None, steps=1, repeats=3, warmup=1
  )
  warmup, *rounds = [tuple(calls[i : i + 2]) for i in range(0, len(calls), 2)]
  assert warmup == ('method', 'reference')
  assert rounds == [('method', 'reference'), ('reference', 'method'), ('method', 'reference')]
  assert [len(t) for t in times] == [3, 3] and states == [1, 2]


def test_main_writes_the_table_as_json(tmp_path):
  path = tmp_path / 'throughput.json'
  argv = ['--methods', 'supervised', '--steps', '1', '--repeats', '2', '--warmup', '1']
  result = throughput.main([*argv, '--no_micro', '--json', str(path)])
  assert json.loads(path.read_text()) == json.loads(json.dumps(result))
  (row,) = result['methods']
  for key in ('images_per_s', 'reference_images_per_s', 'overhead_pct', 'flops_overhead_pct'):
    assert math.isfinite(row[key]), key
  config = throughput.load_config('supervised', 'digits', batch=None, dtype=None)
  views = config.augment.num_global_crops + config.augment.num_local_crops
  assert row['method'] == 'supervised'
  assert row['backbone_passes'] == {'train': views * config.labelled_batch_size}
  assert row['images_per_step'] == config.labelled_batch_size
  assert result['worst_overhead_pct'] == row['overhead_pct']
  assert math.isfinite(row['input_images_per_s']) and row['input_images_per_s'] > 0
  assert result['input_bound'] == (
    ['supervised'] if row['input_images_per_s'] < row['images_per_s'] else []
  )
  assert result['device'].endswith(f'({jax.devices()[0].device_kind})')
