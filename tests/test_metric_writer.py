"""What a run writes as it trains: TensorBoard tags and images, metrics.jsonl, the progress line
(one shared 30-step digits run); interval means, the speed without pauses, the writer without
TensorFlow."""

import json
import logging
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging
from etils import epath

from helpers import tiny_config
from semi_ssl import metric_writer, parallel, train, visuals
from semi_ssl.data import augment, datasets, pipeline


class _Lines(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """(workdir, logged lines) of a 30-step Suave run (labelled and unlabelled images, global and
  local crops), logged every 10 steps and evaluated at 15 and 30."""
  workdir = tmp_path_factory.mktemp('run')
  config = tiny_config('suave', num_steps=30, log_every=10, eval_every=15, checkpoint_every=30)
  handler, verbosity = _Lines(), absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  logging.getLogger().addHandler(handler)
  try:
    train.train_and_evaluate(config, workdir)
  finally:
    logging.getLogger().removeHandler(handler)
    absl_logging.set_verbosity(verbosity)
  return workdir, handler.lines


def _summaries(workdir) -> dict:
  """{tag: [(step, plugin name)]} of the TensorBoard events in WORKDIR/tensorboard."""
  tags = {}
  for path in sorted((workdir / metric_writer.TENSORBOARD_DIR).iterdir()):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append((event.step, value.metadata.plugin_data.plugin_name))
  return tags


def test_tensorboard_holds_train_and_eval_scalars_images_and_hyperparameters(run):
  workdir, _ = run
  tags = _summaries(workdir)
  assert tags['train/loss'] == [(10, 'scalars'), (20, 'scalars'), (30, 'scalars')]
  assert [step for step, _ in tags['train/images_per_second']] == [10, 20, 30]
  assert tags['eval/test_top1'] == [(15, 'scalars'), (30, 'scalars')]
  for kind in ('labelled_global', 'labelled_local', 'unlabelled_global', 'unlabelled_local'):
    assert tags[f'augment/{kind}'] == [(0, 'images')]
  assert tags['eval/test_confusion_matrix'] == [(30, 'images')]
  assert [plugin for _, plugin in tags['_hparams_/session_start_info']] == ['hparams']


def test_metrics_jsonl_has_one_line_per_logged_or_evaluated_step(run):
  workdir, _ = run
  records = [
    json.loads(line) for line in (workdir / metric_writer.METRICS_FILE).read_text().splitlines()
  ]
  assert [r['step'] for r in records] == [10, 15, 20, 30]
  assert {'train/loss', 'train/images_per_second', 'train/learning_rate'} <= set(records[0])
  assert not any(key.startswith('eval/') for key in records[0])
  assert set(records[1]) == {'step'} | {f'eval/{key}' for key in _eval_history(workdir)[15]}
  assert {'train/loss', 'eval/knn_top1'} <= set(records[3])
  results = train.read_results(workdir / train.RESULTS_FILE)
  assert records[3]['eval/test_top1'] == pytest.approx(results['test_top1'])


def _eval_history(workdir) -> dict:
  lines = (workdir / train.EVAL_HISTORY_FILE).read_text().splitlines()
  return {r.pop('step'): r for r in map(json.loads, lines)}


def test_progress_line_names_images_per_second(run):
  _, lines = run
  progress = [line for line in lines if line.startswith('step ') and 'images/s' in line]
  assert [line.split()[1] for line in progress] == ['10/30', '20/30', '30/30']
  assert all(float(line.split(' images/s')[0].split()[-1]) > 0 for line in progress)
  assert any(line.startswith('First step, compilation included:') for line in lines)


def test_interval_mean_is_the_mean_of_the_steps_since_the_last_one():
  mean = metric_writer.IntervalMean()
  losses = [0.5, 2.0, 1.25]
  for loss in losses:
    mean.add({'loss': jnp.float32(loss), 'count': jnp.int32(3)})
  assert mean.mean() == pytest.approx({'loss': np.mean(losses), 'count': 3.0})
  mean.add({'loss': jnp.float32(7.0), 'count': jnp.int32(1)})
  assert mean.mean() == pytest.approx({'loss': 7.0, 'count': 1.0})


def test_interval_mean_leaves_out_non_finite_values():
  """A step that `nonfinite='skip'` skipped does not turn the interval's mean into NaN."""
  mean = metric_writer.IntervalMean()
  for loss, grad in [(1.0, np.nan), (np.inf, np.nan), (3.0, np.nan)]:
    mean.add({'loss': jnp.float32(loss), 'grad': jnp.float32(grad)})
  means = mean.mean()
  assert means['loss'] == 2.0 and np.isnan(means['grad'])


def test_progress_speed_leaves_out_the_first_step_and_paused_seconds():
  now = [100.0]
  progress = metric_writer.Progress(
    num_steps=50, start_step=0, images_per_step=32, clock=lambda: now[0]
  )
  now[0] += 30.0  # Compiling the first step.
  assert progress.restart(1) == 30.0
  now[0] += 9.0  # Steps 2 to 10.
  with progress.paused():
    now[0] += 100.0  # An evaluation.
  now[0] += 9.0  # Steps 11 to 19.
  assert progress.update(19) == {'steps_per_second': 1.0, 'images_per_second': 32.0}
  assert progress.line(19) == 'step 19/50 (38%) | 1.0 steps/s | 32 images/s | ETA 0:00:31'
  now[0] += 2.0
  assert progress.update(21)['steps_per_second'] == 1.0  # The pause counted once only.


def test_progress_before_a_timed_step_writes_no_speed():
  """With log_every=1 the first log comes right after the compiling step: no NaN speed."""
  now = [0.0]
  progress = metric_writer.Progress(
    num_steps=4, start_step=0, images_per_step=8, clock=lambda: now[0]
  )
  now[0] += 30.0
  progress.restart(1)
  assert progress.update(1) == {}
  assert progress.line(1) == 'step 1/4 (25%) | speed not timed yet (the first step compiles)'
  now[0] += 0.5
  assert progress.update(2) == {'steps_per_second': 2.0, 'images_per_second': 16.0}


@pytest.mark.parametrize('missing', ['tensorflow', 'clu'])
def test_without_tensorflow_or_clu_only_metrics_jsonl_is_written_with_one_warning(
  missing, tmp_path, monkeypatch, caplog
):
  monkeypatch.setitem(sys.modules, missing, None)  # Importing it fails.
  (tmp_path / metric_writer.METRICS_FILE).write_text(
    '{"step": 5, "train/loss": 9.0}\n{"step": 8, "train/loss": 8.0}\n'
  )
  writer = metric_writer.RunWriter(epath.Path(tmp_path), enabled=True, start_step=5)
  writer.hparams(tiny_config())
  writer.train(6, {'loss': np.float32(1.5)})
  writer.evaluation(6, {'test_top1': 0.25})
  writer.images(6, {'eval/test_confusion_matrix': np.zeros((4, 4, 1))})
  writer.close()
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and 'metrics go to' in warnings[0].getMessage()
  assert not (tmp_path / metric_writer.TENSORBOARD_DIR).exists()
  lines = (tmp_path / metric_writer.METRICS_FILE).read_text().splitlines()
  # Step 8, after the resumed run's start, is dropped: the run writes it again.
  assert [json.loads(line) for line in lines] == [
    {'step': 5, 'train/loss': 9.0},
    {'step': 6, 'train/loss': 1.5, 'eval/test_top1': 0.25},
  ]


def test_augmentation_grids_show_each_image_then_its_views_enlarged():
  config = tiny_config('suave')
  splits = datasets.load(config)
  cfg = augment.augment_config_from(config, splits.mean, splits.std, splits.image_shape)
  mesh = parallel.create_mesh()
  batch = next(
    pipeline.iterate(
      splits, mesh, start_step=0, num_steps=1, seed=0, labelled_batch_size=16, batch_size=16
    )
  )
  grids = visuals.augmentation_grids(jnp.zeros(2, jnp.uint32), batch, cfg, mesh, num_images=3)
  # 8x8 global and 6x6 local views, each cell framed by one pixel, enlarged 64 // side times.
  assert grids['augment/labelled_global'].shape == (3 * 9 * 8, 3 * 9 * 8, 1)
  assert grids['augment/unlabelled_local'].shape == (3 * 7 * 10, 2 * 7 * 10, 1)
  for grid in grids.values():
    assert 0.0 <= grid.min() and grid.max() <= 1.0
    assert np.ptp(grid) > 0.5


def test_confusion_image_scales_each_row_by_its_largest_count():
  image = visuals.confusion_image(np.array([[8, 2], [0, 0]]))
  assert image.shape == (256, 256, 1)
  assert image[0, 0, 0] == 1.0 and image[0, 128, 0] == 0.25 and image[255, 255, 0] == 0.0
