"""Tests for semi_ssl.data.datasets: digits for real, TFDS sources via tfds.testing.mock_data."""

import dataclasses
import io
import json
import socket
import zipfile

import ml_collections
import numpy as np
from PIL import Image
import pytest
from sklearn import datasets as sk_datasets
from sklearn import model_selection
import tensorflow_datasets as tfds

from semi_ssl.data import datasets
import tfds_mock


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Any attempt to open a connection fails the test."""

  def refuse(*args, **kwargs):
    raise AssertionError(f'a test tried to use the network: {args}')

  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)
  monkeypatch.setattr(socket, 'getaddrinfo', refuse)


def _config(**overrides) -> ml_collections.ConfigDict:
  config = dict(
    dataset='digits',
    data_dir=None,
    seed=0,
    labels_per_class=None,
    label_fraction=None,
    decode_size=16,
    val_size=0,  # Today's tests of the rest of the split; the validation split's have their own.
  )
  config.update(overrides)
  return ml_collections.ConfigDict(config)


def _reference_digits():
  """The digits train/test split, written out from the spec."""
  digits = sk_datasets.load_digits()
  images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
  train, test = model_selection.train_test_split(
    np.arange(len(digits.target)), test_size=0.2, stratify=digits.target, random_state=0
  )
  return images[train], digits.target[train], images[test], digits.target[test]


def test_digits_shapes_and_statistics():
  splits = datasets.load(_config(labels_per_class=5))
  train_images, _, _, _ = _reference_digits()
  assert (splits.name, splits.num_classes, splits.image_shape) == ('digits', 10, (8, 8, 1))
  for images, n in (
    (splits.labelled_images, 50),
    (splits.unlabelled_images, 1437 - 50),
    (splits.test_images, 360),
  ):
    assert images.shape == (n, 8, 8, 1) and images.dtype == np.uint8
  assert splits.labelled_labels.dtype == splits.test_labels.dtype == np.int32
  assert splits.labelled_labels.shape == (50,) and splits.test_labels.shape == (360,)
  np.testing.assert_allclose(splits.mean, [np.mean(train_images / 255)], rtol=1e-6)
  np.testing.assert_allclose(splits.std, [np.std(train_images / 255)], rtol=1e-6)


def test_digits_test_split_is_fixed_across_seeds():
  _, _, test_images, test_labels = _reference_digits()
  for seed in (0, 1):
    splits = datasets.load(_config(seed=seed, labels_per_class=3))
    np.testing.assert_array_equal(splits.test_images, test_images)
    np.testing.assert_array_equal(splits.test_labels, test_labels)


@pytest.mark.parametrize('seed', [0, 7])
def test_digits_labelled_and_unlabelled_partition_the_train_split(seed):
  train_images, train_labels, _, _ = _reference_digits()
  splits = datasets.load(_config(seed=seed, labels_per_class=4))
  idx = np.array(splits.split_info['labelled_indices'])
  assert len(np.unique(idx)) == len(idx) == 40
  np.testing.assert_array_equal(np.bincount(splits.labelled_labels), [4] * 10)
  np.testing.assert_array_equal(splits.labelled_images, train_images[idx])
  np.testing.assert_array_equal(splits.labelled_labels, train_labels[idx])
  np.testing.assert_array_equal(splits.unlabelled_images, np.delete(train_images, idx, axis=0))
  rows = lambda images: sorted(image.tobytes() for image in images)  # noqa: E731
  assert rows(np.concatenate([splits.labelled_images, splits.unlabelled_images])) == rows(
    train_images
  )


def test_digits_split_is_deterministic_per_seed_and_differs_across_seeds():
  indices = lambda seed: datasets.load(  # noqa: E731
    _config(seed=seed, labels_per_class=2)
  ).split_info['labelled_indices']
  assert indices(3) == indices(3)
  assert indices(3) != indices(4)


def test_digits_label_fraction_is_stratified():
  _, train_labels, _, _ = _reference_digits()
  splits = datasets.load(_config(label_fraction=0.1))
  expected = [max(1, round(0.1 * n)) for n in np.bincount(train_labels)]
  assert splits.split_info['labelled_per_class'] == expected
  np.testing.assert_array_equal(np.bincount(splits.labelled_labels), expected)
  assert len(splits.unlabelled_images) == len(train_labels) - sum(expected)


def test_split_info_is_json_serialisable():
  info = datasets.load(_config(seed=5, labels_per_class=1)).split_info
  assert json.loads(json.dumps(info)) == info
  assert {
    k: info[k]
    for k in (
      'dataset',
      'seed',
      'labels_per_class',
      'label_fraction',
      'num_labelled',
      'num_unlabelled',
      'num_test',
    )
  } == dict(
    dataset='digits',
    seed=5,
    labels_per_class=1,
    label_fraction=None,
    num_labelled=10,
    num_unlabelled=1427,
    num_test=360,
  )


def test_unlabelled_images_come_without_labels():
  fields = {f.name for f in dataclasses.fields(datasets.DatasetSplits)}
  assert fields == {
    'name',
    'num_classes',
    'image_shape',
    'mean',
    'std',
    'labelled_images',
    'labelled_labels',
    'unlabelled_images',
    'test_images',
    'test_labels',
    'val_images',
    'val_labels',
    'split_info',
  }
  splits = datasets.load(_config(labels_per_class=1))
  assert not hasattr(splits, 'unlabelled_labels')
  with pytest.raises(dataclasses.FrozenInstanceError):
    splits.unlabelled_labels = np.zeros(3)  # pytype: disable=not-writable


def test_select_labelled_rejects_too_many_per_class():
  with pytest.raises(ValueError, match='labels_per_class=3 exceeds the 2 examples of class 1'):
    datasets.select_labelled(np.array([0, 0, 0, 1, 1]), 2, seed=0, labels_per_class=3)


@pytest.mark.parametrize(
  'overrides, key',
  [
    (dict(dataset='cifar11', labels_per_class=1), 'config.dataset'),
    (dict(labels_per_class=1, label_fraction=0.1), 'config.labels_per_class'),
    (dict(), 'config.label_fraction'),
    (dict(labels_per_class=0), 'config.labels_per_class'),
    (dict(label_fraction=0.0), 'config.label_fraction'),
    (dict(label_fraction=1.5), 'config.label_fraction'),
    (dict(labels_per_class=140), 'config.labels_per_class'),  # Smallest digits class: 139.
    (dict(dataset='cifar10', labels_per_class=5001), 'config.labels_per_class'),
    (dict(dataset='cifar100', labels_per_class=501), 'config.labels_per_class'),
    (dict(dataset='imagenet2012', label_fraction=0.05), 'config.label_fraction'),
    (dict(dataset='imagenet2012', labels_per_class=10), 'config.labels_per_class'),
    (dict(dataset='imagenet2012', label_fraction=0.1, decode_size=0), 'config.decode_size'),
    (dict(labels_per_class=1, val_size=-1), 'config.val_size'),
    (dict(labels_per_class=1, val_size=0.1), 'config.val_size'),
    (dict(labels_per_class=1, val_size=5), 'config.val_size'),  # Fewer than the 10 classes.
    (dict(labels_per_class=1, val_size=1437), 'config.val_size'),  # The whole train split.
    (dict(dataset='cifar10', labels_per_class=4501, val_size=None), 'config.labels_per_class'),
    (dict(dataset='cifar100', labels_per_class=451, val_size=None), 'config.labels_per_class'),
  ],
)
def test_check_config_errors_name_the_key(overrides, key):
  with pytest.raises(ValueError) as error:
    datasets.check_config(_config(**overrides))
  assert key in str(error.value) and '\n' not in str(error.value)


def test_check_config_accepts_smallest_digits_class():
  datasets.check_config(_config(labels_per_class=139))


# --- The validation split. -------------------------------------------------------------------


def test_digits_validation_split_is_a_fixed_stratified_tenth_of_the_train_split_in_no_pool():
  train_images, train_labels, test_images, test_labels = _reference_digits()
  _, expected = model_selection.train_test_split(  # The spec: 10% of it, stratified, fixed.
    np.arange(len(train_labels)), test_size=0.1, stratify=train_labels, random_state=0
  )
  expected = np.sort(expected)
  labelled_by_seed = []
  for seed in (0, 7):
    splits = datasets.load(_config(seed=seed, labels_per_class=5, val_size=None))
    info = splits.split_info
    val, labelled = np.array(info['val_indices']), np.array(info['labelled_indices'])
    np.testing.assert_array_equal(val, expected)  # The same for every seed.
    np.testing.assert_array_equal(splits.val_images, train_images[val])
    np.testing.assert_array_equal(splits.val_labels, train_labels[val])
    assert splits.val_labels.dtype == np.int32
    # Validation, labelled and unlabelled images partition the train split (by index).
    assert not set(val.tolist()) & set(labelled.tolist())
    np.testing.assert_array_equal(splits.labelled_images, train_images[labelled])
    np.testing.assert_array_equal(
      splits.unlabelled_images, np.delete(train_images, np.concatenate([val, labelled]), axis=0)
    )
    np.testing.assert_array_equal(np.bincount(splits.labelled_labels), [5] * 10)
    # The test split is today's.
    np.testing.assert_array_equal(splits.test_images, test_images)
    np.testing.assert_array_equal(splits.test_labels, test_labels)
    counts = info['num_val'], info['num_labelled'], info['num_unlabelled'], info['num_test']
    assert counts == (144, 50, 1437 - 144 - 50, 360)
    labelled_by_seed.append(labelled)
  assert not np.array_equal(*labelled_by_seed)  # The seed picks the labelled subset only.
  # Stratified: every class within one image of a tenth of its train images.
  assert np.abs(np.bincount(splits.val_labels) - np.bincount(train_labels) / 10).max() < 1


@pytest.mark.parametrize('dataset, classes', [('cifar10', 10), ('cifar100', 100)])
def test_cifar_validation_split_is_5000_images_as_many_of_every_class(dataset, classes):
  labels = np.random.default_rng(0).permutation(np.repeat(np.arange(classes), 50_000 // classes))
  size = datasets.validation_size(_config(dataset=dataset, val_size=None), len(labels))
  val, rest = datasets.split_validation(labels, size)
  np.testing.assert_array_equal(np.bincount(labels[val]), [5000 // classes] * classes)
  np.testing.assert_array_equal(np.sort(np.concatenate([val, rest])), np.arange(50_000))


def test_labelled_images_per_class_must_fit_outside_the_validation_split(tmp_path):
  _, train_labels, _, _ = _reference_digits()
  rest = datasets.split_validation(train_labels, 144)[1]
  smallest = np.bincount(train_labels[rest]).min()  # Below the 139 of the whole train split.
  datasets.check_config(_config(labels_per_class=smallest, val_size=None))
  with pytest.raises(ValueError) as error:
    datasets.check_config(_config(labels_per_class=smallest + 1, val_size=None))
  assert str(error.value) == (
    f'config.labels_per_class={smallest + 1} exceeds the {smallest} train images of the '
    f'smallest digits class outside the 144 validation images: use at most {smallest} (or '
    'set a smaller --config.val_size; 0: none).'
  )
  cifar = _config(dataset='cifar10', data_dir=str(tmp_path), labels_per_class=4500, val_size=None)
  with pytest.raises(ValueError, match="'cifar10' is not prepared"):  # Past the label check.
    datasets.check_config(cifar)


def _records(labels, names) -> list[dict]:
  """A data source of records with a label and a file name, as TFDS reads them."""
  return [dict(label=np.int64(label), file_name=name) for label, name in zip(labels, names)]


def test_minival_avoids_the_labelled_subsets_takes_as_many_of_every_class_and_is_fixed():
  labels = np.random.default_rng(1).permutation(np.repeat(np.arange(4), 15))
  names = [f'n{i:03d}.JPEG' for i in range(60)]
  subsets = ([*range(10)], [*range(30, 45)])  # Records of the train split, as ImageNet's.
  train = _records(labels, names)
  subset_sources = [
    _records(labels[s], [names[i].encode() for i in s])  # TFDS reads text as bytes.
    for s in subsets
  ]
  minival = datasets.draw_minival(train, subset_sources, 8, num_classes=4, chunk=7)
  expected, taken = [], np.zeros(4, int)  # The spec, written out.
  for i in np.random.default_rng(0).permutation(60):
    if i not in subsets[0] + subsets[1] and taken[labels[i]] < 2:
      taken[labels[i]] += 1
      expected.append(int(i))
  assert minival['indices'] == sorted(expected[:8])
  assert minival['labels'] == labels[minival['indices']].tolist()
  assert minival['file_names'] == [names[i] for i in minival['indices']]
  np.testing.assert_array_equal(np.bincount(minival['labels'], minlength=4), [2] * 4)
  assert datasets.draw_minival(train, subset_sources, 8, num_classes=4) == minival
  with pytest.raises(ValueError, match=r'^config.val_size=40: .* set a smaller') as error:
    datasets.draw_minival(train, subset_sources, 40, num_classes=4)
  assert '\n' not in str(error.value)


class _Records:
  """Records `records` of a data source, as a data source."""

  def __init__(self, source, records):
    self._source, self._records = source, records

  def __len__(self):
    return len(self._records)

  def __getitem__(self, i):
    return self._source[self._records[i]]


def test_imagenet_minival_is_in_no_pool_and_drawn_once(tmp_path, monkeypatch):
  n, size = 24, 16
  tfds_mock.prepare(
    tmp_path, 'imagenet2012', '5.1.0', {'train': n, 'validation': n}, 'array_record'
  )
  tfds_mock.prepare(tmp_path, 'imagenet2012_subset/1pct', '5.0.0', {'train': 2}, 'array_record')
  config = _config(
    dataset='imagenet2012',
    data_dir=str(tmp_path),
    label_fraction=0.01,
    decode_size=size,
    val_size=4,
  )
  with pytest.raises(ValueError, match=r"'imagenet2012_subset/10pct' is not prepared .*val_size"):
    datasets.check_config(config)  # The minival avoids both subsets: both are read.
  tfds_mock.prepare(tmp_path, 'imagenet2012_subset/10pct', '5.0.0', {'train': 8}, 'array_record')
  # Mock records are the same in every dataset: each subset is made of train records.
  subsets = {
    'imagenet2012_subset/1pct:5.0.0': [10, 11],
    'imagenet2012_subset/10pct:5.0.0': [*range(8)],
  }
  data_source, opened = tfds.data_source, []

  def spy(name, *, split, **kwargs):
    source = data_source(name, split=split, **kwargs)
    opened.append((name, split, *source[0]))
    return _Records(source, subsets[name]) if name in subsets else source

  monkeypatch.setattr(tfds, 'data_source', spy)
  cache = tmp_path / 'semi_ssl' / 'imagenet2012-5.1.0-minival-4.json'
  with tfds_mock.mock_data(tmp_path, num_examples=n):
    datasets.check_config(config)
    splits = datasets.load(config)
    assert ('imagenet2012:5.1.0', 'train', 'file_name', 'label') in opened and cache.exists()
    opened.clear()
    again = datasets.load(config)  # From the cache: no train labels, no 10% subset read.
    assert ('imagenet2012:5.1.0', 'train', 'file_name', 'label') not in opened
    assert not any(name.startswith('imagenet2012_subset/10pct') for name, *_ in opened)
    train = data_source('imagenet2012', split='train', decoders=datasets._ENCODED_IMAGE)
    images = np.stack([datasets.decode_center_square(train[i]['image'], size) for i in range(n)])
    records = data_source('imagenet2012', split='train', decoders=datasets._LABEL_AND_FILE_NAME)
    labels = np.array([records[i]['label'] for i in range(n)])
    # A cache that holds an image of the labelled subset (train record 10) is refused.
    minival = json.loads(cache.read_text())
    minival['file_names'][0] = records[10]['file_name']
    cache.write_text(json.dumps(minival))
    with pytest.raises(ValueError, match=r'minival-4.json holds images of .*1pct: .*delete it'):
      datasets.load(config)
  val = np.array(splits.split_info['val_indices'])
  assert len(val) == 4 and not set(val.tolist()) & {*range(8), 10, 11}
  np.testing.assert_array_equal(splits.val_images[np.arange(4)], images[val])
  np.testing.assert_array_equal(splits.val_labels, labels[val])
  assert splits.val_labels.dtype == np.int32
  assert len(splits.unlabelled_images) == splits.split_info['num_unlabelled'] == n - 4
  np.testing.assert_array_equal(
    splits.unlabelled_images[np.arange(n - 4)], np.delete(images, val, axis=0)
  )
  assert splits.split_info['num_val'] == 4 and again.split_info == splits.split_info
  np.testing.assert_array_equal(again.val_labels, splits.val_labels)


# --- TFDS sources. ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  'overrides, missing',
  [
    (dict(dataset='cifar10', labels_per_class=1), "dataset 'cifar10' is not prepared in"),
    (dict(dataset='cifar100', label_fraction=0.1), "dataset 'cifar100' is not prepared in"),
    (
      dict(dataset='imagenet2012', label_fraction=0.01),
      "dataset 'imagenet2012' is not prepared in",
    ),
  ],
)
def test_missing_tfds_dataset_fails_fast_without_calling_tfds(
  overrides, missing, tmp_path, monkeypatch
):
  def refuse(*args, **kwargs):
    raise AssertionError('tfds was called for a dataset that is not prepared')

  for fn in ('load', 'data_source', 'builder'):
    monkeypatch.setattr(tfds, fn, refuse)
  with pytest.raises(ValueError, match=missing) as error:
    datasets.load(_config(data_dir=str(tmp_path), **overrides))
  message = str(error.value)
  assert f'tfds build {overrides["dataset"]} ' in message and f'--data_dir={tmp_path}' in message
  assert 'config.data_dir' in message


def test_imagenet_subset_must_be_prepared_too(tmp_path):
  tfds_mock.prepare(tmp_path, 'imagenet2012', '5.1.0', {'train': 4}, 'array_record')
  with pytest.raises(ValueError, match="'imagenet2012_subset/10pct' is not prepared"):
    datasets.check_config(
      _config(dataset='imagenet2012', label_fraction=0.1, data_dir=str(tmp_path))
    )


def test_imagenet_without_random_access_format_is_rejected(tmp_path):
  tfds_mock.prepare(tmp_path, 'imagenet2012', '5.1.0', {'train': 4}, 'tfrecord')
  with pytest.raises(ValueError, match='stored as tfrecord.*--out_file_format=array_record'):
    datasets.check_config(
      _config(dataset='imagenet2012', label_fraction=0.01, data_dir=str(tmp_path))
    )


def test_cifar10_from_mocked_tfds(tmp_path):
  tfds_mock.prepare(tmp_path, 'cifar10', '3.0.2', {'train': 40, 'test': 40})
  with tfds_mock.mock_data(tmp_path, num_examples=40):
    splits = datasets.load(
      _config(dataset='cifar10', data_dir=str(tmp_path), seed=1, labels_per_class=1)
    )
    train_images, train_labels = tfds.as_numpy(
      tfds.load('cifar10', split='train', batch_size=-1, as_supervised=True)
    )
  idx = np.array(splits.split_info['labelled_indices'])
  assert (splits.num_classes, splits.image_shape) == (10, (32, 32, 3))
  assert (splits.mean, splits.std) == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
  assert splits.labelled_images.dtype == splits.unlabelled_images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(splits.labelled_labels, minlength=10), [1] * 10)
  np.testing.assert_array_equal(splits.labelled_images, train_images[idx])
  np.testing.assert_array_equal(splits.labelled_labels, train_labels[idx])
  np.testing.assert_array_equal(splits.unlabelled_images, np.delete(train_images, idx, axis=0))
  assert splits.test_images.shape == (40, 32, 32, 3) and splits.test_labels.dtype == np.int32
  assert splits.split_info['num_unlabelled'] == 30


def test_imagenet_from_mocked_tfds(tmp_path, monkeypatch):
  n, size = 6, 16
  tfds_mock.prepare(
    tmp_path, 'imagenet2012', '5.1.0', {'train': n, 'validation': n}, 'array_record'
  )
  tfds_mock.prepare(tmp_path, 'imagenet2012_subset/1pct', '5.0.0', {'train': n}, 'array_record')
  data_source, opened = tfds.data_source, []

  def spy(name, *, split, **kwargs):
    source = data_source(name, split=split, **kwargs)
    opened.append((name, split, source))
    return source

  monkeypatch.setattr(tfds, 'data_source', spy)
  with tfds_mock.mock_data(tmp_path, num_examples=n):
    splits = datasets.load(
      _config(dataset='imagenet2012', data_dir=str(tmp_path), label_fraction=0.01, decode_size=size)
    )
    # Which features of which split were read: labels of imagenet2012 train never are.
    read = sorted((name, split, *source[0]) for name, split, source in opened)
    subset = lambda features: data_source(  # noqa: E731
      'imagenet2012_subset/1pct',
      split='train',
      decoders=tfds.decode.PartialDecoding(
        features, decoders={'image': tfds.decode.SkipDecoding()}
      ),
    )
    encoded = [record['image'] for record in subset({'image': True})]
    # Mock records depend on the features read: these are the ones the labels are read with.
    labels = [record['label'] for record in subset({'label': True, 'file_name': True})]
    batch = splits.labelled_images[np.array([[4, 1, 1]])]
    empty = splits.unlabelled_images[np.array([], np.int64)]
  assert read == [
    ('imagenet2012:5.1.0', 'train', 'image'),
    ('imagenet2012:5.1.0', 'validation', 'image'),
    ('imagenet2012:5.1.0', 'validation', 'label'),
    ('imagenet2012_subset/1pct:5.0.0', 'train', 'file_name', 'label'),
    ('imagenet2012_subset/1pct:5.0.0', 'train', 'image'),
  ]
  assert splits.image_shape == (size, size, 3) and splits.num_classes == 1000
  for images in (splits.labelled_images, splits.unlabelled_images, splits.test_images):
    assert isinstance(images, datasets.DecodedImages)
    assert images.shape == (n, size, size, 3) and len(images) == n and images.dtype == np.uint8
  assert batch.shape == (1, 3, size, size, 3) and batch.dtype == np.uint8
  for image, i in zip(batch[0], (4, 1, 1)):
    np.testing.assert_array_equal(image, datasets.decode_center_square(encoded[i], size))
  assert empty.shape == (0, size, size, 3)
  np.testing.assert_array_equal(splits.labelled_labels, labels)
  assert splits.labelled_labels.dtype == splits.test_labels.dtype == np.int32
  info = splits.split_info
  assert (info['num_labelled'], info['num_unlabelled'], info['num_test']) == (n, n, n)
  assert 'SimCLR protocol' in info['protocol'] and 'labelled_indices' not in info
  assert json.loads(json.dumps(info)) == info


@pytest.mark.parametrize('width, height', [(48, 24), (20, 40)])
def test_decode_center_square_resizes_shorter_side_and_crops_the_centre(width, height):
  side = min(width, height)
  image = np.zeros((height, width, 3), np.uint8)  # Red margins around a green centre square.
  image[..., 0] = 255
  top, left = (height - side) // 2, (width - side) // 2
  image[top : top + side, left : left + side] = (0, 255, 0)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  square = datasets.decode_center_square(buffer.getvalue(), side // 2)
  assert square.shape == (side // 2, side // 2, 3) and square.dtype == np.uint8
  np.testing.assert_array_equal(square[1:-1, 1:-1], np.full_like(square[1:-1, 1:-1], (0, 255, 0)))


def test_decode_center_square_of_large_jpeg_matches_full_decode():
  """JPEG decoding at a reduced scale (`draft`) changes pixels only slightly."""
  rows, cols = np.mgrid[0:256, 0:384]
  image = np.stack([rows, cols * 255 // 383, (rows + cols) // 3], -1).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=95)
  square = datasets.decode_center_square(buffer.getvalue(), 32)
  reference = np.asarray(
    Image.fromarray(image[:, 64:320]).resize((32, 32), Image.Resampling.BICUBIC)
  )
  np.testing.assert_allclose(square, reference, atol=4)


def _write_npz(path, **overrides):
  rng = np.random.default_rng(0)
  arrays = dict(
    train_images=rng.integers(0, 256, (60, 6, 6, 3), dtype=np.uint8),
    train_labels=np.repeat(np.arange(3), 20),
    test_images=rng.integers(0, 256, (9, 6, 6, 3), dtype=np.uint8),
    test_labels=np.repeat(np.arange(3), 3),
  )
  arrays.update(overrides)
  np.savez(path, **arrays)
  return str(path)


def test_npz_source_splits_your_own_data(tmp_path):
  config = _config(dataset='npz', data_file=_write_npz(tmp_path / 'mine.npz'), labels_per_class=4)
  datasets.check_config(config)
  assert datasets.image_shape(config) == (6, 6, 3)
  splits = datasets.load(config)
  assert splits.num_classes == 3 and len(splits.mean) == 3
  assert len(splits.labelled_labels) == 12 and len(splits.unlabelled_images) == 48
  assert splits.test_images.shape == (9, 6, 6, 3)


@pytest.mark.parametrize(
  'overrides, message',
  [
    (
      dict(train_images=np.zeros((60, 6, 6, 3), np.float32)),
      r'train images have dtype float32; expected uint8.*np.round\(images \* 255\)',
    ),
    (
      dict(train_images=np.zeros((60, 6, 6), np.uint8)),
      r'train images have shape \(60, 6, 6\); expected \[N, H, W, C\].*images\[..., None\]',
    ),
    (dict(test_images=np.zeros((9, 5, 5, 3), np.uint8)), 'both splits need one image shape'),
    (dict(test_labels=np.arange(4)), r'test labels have shape \(4,\).*expected integers \[9\]'),
  ],
)
def test_npz_source_with_wrong_images_or_labels_names_the_problem(tmp_path, overrides, message):
  config = _config(
    dataset='npz', data_file=_write_npz(tmp_path / 'bad.npz', **overrides), labels_per_class=4
  )
  with pytest.raises(ValueError, match=message):
    datasets.check_config(config)


def test_npz_source_without_a_file_says_how_to_give_one(tmp_path):
  with pytest.raises(ValueError, match='config.data_file=None is not a file'):
    datasets.check_config(_config(dataset='npz', data_file=None, labels_per_class=4))
  np.savez(tmp_path / 'partial.npz', train_images=np.zeros((2, 6, 6, 3), np.uint8))
  with pytest.raises(ValueError, match=r"lacks \['train_labels', 'test_images', 'test_labels'\]"):
    datasets.check_config(
      _config(dataset='npz', data_file=str(tmp_path / 'partial.npz'), labels_per_class=1)
    )


_LABELS = np.repeat(np.arange(3), 20)  # _write_npz's train labels: classes 0, 1, 2.


def _with_last(labels, value):
  return np.concatenate([labels[:-1], [value]])


def _write_bytes(path, data: bytes) -> str:
  path.write_bytes(data)
  return str(path)


def _first_half_of_npz(path) -> str:
  data = open(_write_npz(path), 'rb').read()
  return _write_bytes(path, data[: len(data) // 2])


def _flipped_byte_in_npz(path) -> str:
  data = bytearray(open(_write_npz(path), 'rb').read())
  data[len(data) // 3] ^= 0xFF  # Inside train_images' pixels: the member's CRC no longer holds.
  return _write_bytes(path, bytes(data))


def _npy_instead_of_npz(path) -> str:
  with open(path, 'wb') as file:
    np.save(file, np.zeros((2, 6, 6, 3), np.uint8))
  return str(path)


def _zip_without_npy_headers(path) -> str:
  with zipfile.ZipFile(path, 'w') as archive:
    for key in ('train_images', 'train_labels', 'test_images', 'test_labels'):
      archive.writestr(f'{key}.npy', b'not an array')
  return str(path)


def _directory(path) -> str:
  path.mkdir()
  return str(path)


@pytest.mark.parametrize(
  'write, message',
  [
    (
      lambda p: _write_npz(p, train_labels=_with_last(_LABELS, 1_000_000)),
      r'train_labels has 1 label equal to 1000000 but classes 3\.\.999999 have no train image: '
      r'labels must be 0\.\.C-1 with every class in train_labels \(drop or remap the stray',
    ),
    (
      lambda p: _write_npz(p, train_labels=np.repeat([0, 2, 5], 20)),
      r'train_labels has 40 labels with values 2, 5 but classes 1, 3\.\.4 \(3 of the 6\) have no '
      'train image',
    ),
    (
      lambda p: _write_npz(p, train_labels=_with_last(_LABELS, -1)),
      r'train_labels has 1 label equal to -1: labels must be 0\.\.C-1',
    ),
    (
      lambda p: _write_npz(p, test_labels=_with_last(np.repeat(np.arange(3), 3), 3)),
      r'test_labels has 1 label equal to 3 but train_labels has classes 0\.\.2 only: every test '
      'label must be a class with train images',
    ),
    (
      lambda p: _write_npz(p, test_labels=np.array([0, 1, 2, 10, 10, -1, 0, 1, 2])),
      r'test_labels has 3 labels with values -1, 10 but train_labels has classes 0\.\.2 only',
    ),
    (
      lambda p: _write_npz(
        p, train_images=np.zeros((0, 6, 6, 3), np.uint8), train_labels=np.zeros(0, np.int64)
      ),
      r'train images have shape \(0, 6, 6, 3\), which holds no pixels',
    ),
    (
      lambda p: _write_npz(
        p, test_images=np.zeros((0, 6, 6, 3), np.uint8), test_labels=np.zeros(0, np.int64)
      ),
      r'test images have shape \(0, 6, 6, 3\), which holds no pixels',
    ),
    (
      lambda p: _write_npz(p, train_labels=np.array([0, 1, None] * 20, object)),
      'train_labels holds Python objects, which are not unpickled: it must be an np.savez archive',
    ),
    (
      lambda p: _write_bytes(p, b'0 1 2\n3 4 5\n'),
      r'it is not a zip archive \(text or another format\): it must be an np.savez archive',
    ),
    (_first_half_of_npz, 'it is truncated or damaged: it must be an np.savez archive'),
    (lambda p: _write_bytes(p, b''), 'it is empty: it must be an np.savez archive'),
    (_npy_instead_of_npz, r'it is a single \.npy array \(np\.save\), not an \.npz archive'),
    (_flipped_byte_in_npz, r"it cannot be read \(Bad CRC-32 for file 'train_images\.npy'\)"),
    (_zip_without_npy_headers, 'train_images is not a saved numpy array'),
    (_directory, "is not a file: dataset='npz' reads your data from an np.savez archive"),
  ],
  ids=[
    'stray',
    'gaps',
    'negative',
    'test_only_class',
    'test_out_of_range',
    'no_train_images',
    'no_test_images',
    'object_array',
    'text',
    'truncated',
    'empty_file',
    'npy',
    'damaged',
    'raw_members',
    'directory',
  ],
)
@pytest.mark.parametrize(
  'read',
  [datasets.check_config, datasets.num_classes, datasets.image_shape],
  ids=lambda read: read.__name__,
)
def test_bad_npz_is_one_line_naming_the_file_and_the_problem(tmp_path, write, message, read):
  path = write(tmp_path / 'mine.npz')
  with pytest.raises(ValueError, match=message) as error:
    read(_config(dataset='npz', data_file=path, label_fraction=0.5))
  assert path in str(error.value) and '\n' not in str(error.value)


def test_npz_with_every_class_in_train_loads_and_is_read_once(tmp_path):
  train_labels = np.random.default_rng(1).permutation(np.repeat(np.arange(58, dtype=np.uint8), 2))
  config = _config(
    dataset='npz',
    label_fraction=0.5,
    data_file=_write_npz(
      tmp_path / 'mine.npz',
      train_images=np.zeros((116, 6, 6, 3), np.uint8),
      train_labels=train_labels,
      test_labels=np.array([57, 0, 3, 3, 9, 1, 1, 2, 0]),
    ),
  )
  datasets._read_npz.cache_clear()
  datasets.check_config(config)
  assert datasets.num_classes(config) == 58 and datasets.image_shape(config) == (6, 6, 3)
  splits = datasets.load(config)
  assert datasets._read_npz.cache_info().misses == 1
  assert splits.num_classes == 58 and splits.split_info['labelled_per_class'] == [1] * 58
  assert splits.labelled_labels.dtype == splits.test_labels.dtype == np.int32
  np.testing.assert_array_equal(splits.test_labels, [57, 0, 3, 3, 9, 1, 1, 2, 0])
