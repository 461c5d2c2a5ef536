"""Mock TFDS datasets for tests: a data dir that looks prepared, and mock records to read.

`tfds.testing.mock_data` runs with MockPolicy.USE_FILES, which takes the split sizes from the
dataset_info.json written by `prepare` (USE_CODE crashes `batch_size=-1` loads in TF 2.21).
"""

import json
import pathlib

import tensorflow_datasets as tfds

from semi_ssl.data import datasets


def prepare(
  data_dir: pathlib.Path,
  name: str,
  version: str,
  splits: dict[str, int],
  file_format: str = 'tfrecord',
) -> None:
  """Writes the dataset_info.json of a prepared TFDS dataset: what `check_config` looks for
  and what `mock_data` reads the split sizes from."""
  version_dir = data_dir / name / version
  version_dir.mkdir(parents=True)
  info = dict(
    name=name.split('/')[0],
    version=version,
    fileFormat=file_format,
    splits=[dict(name=split, shardLengths=[str(n)]) for split, n in splits.items()],
  )
  (version_dir / 'dataset_info.json').write_text(json.dumps(info))


def prepare_for(data_dir: pathlib.Path, dataset: str, num_examples: int) -> None:
  """Prepares every TFDS dataset that `datasets.load` reads for `dataset`, each split with
  `num_examples` records (ImageNet: both SimCLR subsets, which drawing the minival reads)."""
  if dataset == 'imagenet2012':
    subsets = ('imagenet2012_subset/1pct', 'imagenet2012_subset/10pct')
    for name, splits in (
      ('imagenet2012', ('train', 'validation')),
      *((s, ('train',)) for s in subsets),
    ):
      prepare(
        data_dir,
        name,
        datasets._TFDS_VERSIONS[name],  # pylint: disable=protected-access
        dict.fromkeys(splits, num_examples),
        'array_record',
      )
  else:
    prepare(
      data_dir,
      dataset,
      datasets._TFDS_VERSIONS[dataset],  # pylint: disable=protected-access
      dict.fromkeys(('train', 'test'), num_examples),
    )


def mock_data(data_dir: pathlib.Path, num_examples: int):
  """Context in which TFDS reads `num_examples` random records per split of `data_dir`.

  A record depends on its index and the features read only: every split of every dataset holds
  the same records (so no minival disjoint from ImageNet's subsets can be drawn from them).
  """
  return tfds.testing.mock_data(
    num_examples=num_examples, data_dir=str(data_dir), policy=tfds.testing.MockPolicy.USE_FILES
  )
