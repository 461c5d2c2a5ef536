"""semi_ssl.export: a tiny digits run's final model, exported and run without the trainer."""

import numpy as np
import pytest

from helpers import tiny_config
from semi_ssl import export, train
from semi_ssl.data import datasets
from semi_ssl.errors import UserError


def test_the_exported_model_scores_what_the_run_reported(tmp_path):
  """With a Polyak average, whose weights the run evaluated and the export holds."""
  config = tiny_config(polyak_decay=0.5, num_steps=2)
  results = train.train_and_evaluate(config, tmp_path / 'run')
  out = tmp_path / 'model.npz'
  record = export.export(tmp_path / 'run', out)
  with np.load(out) as saved:
    names = set(saved)
  assert {name.split('/')[0] for name in names} == {'params', 'model_state', 'export.json'}
  assert 'params/head/kernel' in names and 'model_state/backbone/stem/bn/mean' in names
  assert record['config']['polyak_decay'] == 0.5
  apply = export.load_exported(out)
  splits = datasets.load(config)
  logits = np.asarray(apply(splits.test_images))
  assert logits.shape == (len(splits.test_labels), 10)
  assert np.mean(np.argmax(logits, -1) == splits.test_labels) == results['test_top1']


def test_a_file_that_is_not_an_export_is_named(tmp_path):
  path = tmp_path / 'other.npz'
  np.savez(path, x=np.zeros(3))
  with pytest.raises(UserError, match='is no semi_ssl export'):
    export.load_exported(path)
