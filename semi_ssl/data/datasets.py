"""Dataset sources and the seeded split of the train set into labelled and unlabelled images.

`load(config)` returns a `DatasetSplits`: uint8 images [N, H, W, C] with random access by
index arrays (`images[np.array([3, 1])]`), int32 labels for the labelled and test images,
and none at all for the unlabelled ones.

Sources (`config.dataset`):
  digits        scikit-learn's 8x8 digits, embedded: runs anywhere, offline.
  cifar10/100   TFDS, held in host memory.
  imagenet2012  TFDS in array_record format, read and decoded on access (`DecodedImages`).
  npz           your own data: `config.data_file` is an .npz with uint8 `train_images`,
                `test_images` [N, H, W, C] (C = 1 or 3) and integer `train_labels`,
                `test_labels` [N] in 0..num_classes-1, every class with train images;
                checked before anything compiles.

The test split is fixed. So is the validation split, `config.val_size` train images in neither
the labelled nor the unlabelled pool, the same for every seed (None: 10% of the train split,
stratified, or on ImageNet a minival of 10 images of every class in neither SimCLR subset,
drawn once and cached under `config.data_dir`; 0: none). The labelled subset of the rest of the
train split is `config.labels_per_class` images of every class, or a stratified
`config.label_fraction` of it, chosen by `config.seed` (ImageNet: the SimCLR 1% / 10% subsets);
the rest is unlabelled.

TFDS datasets must be prepared beforehand: offline, TFDS looks for an unprepared dataset on
the network for minutes before failing, so `check_config` first looks for its files.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
import dataclasses
import functools
import io
import json
from typing import Any, Protocol
import uuid
import zipfile
import zlib

from absl import logging
from etils import epath
import ml_collections
import numpy as np
from PIL import Image
from sklearn import datasets as sk_datasets
from sklearn import model_selection

from semi_ssl.config_base import closest_key
from semi_ssl.errors import require

try:  # Only the TFDS data sets need it: digits and .npz files load where it is not installed.
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core import constants as tfds_constants
  from tensorflow_datasets.core import file_adapters
except ImportError:
  tfds = None


class ArrayLike(Protocol):
  """Random-access images: `x[int indices of any shape] -> uint8 [*indices.shape, H, W, C]`."""

  shape: tuple[int, ...]
  dtype: np.dtype

  def __len__(self) -> int: ...

  def __getitem__(self, indices: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
  """A dataset split for semi-supervised learning; unlabelled images come without labels."""

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) of the stored uint8 images.
  mean: tuple[float, ...]  # Per-channel mean of the images scaled to [0, 1].
  std: tuple[float, ...]  # Per-channel standard deviation, same scale.
  labelled_images: ArrayLike  # uint8 [L, H, W, C]
  labelled_labels: np.ndarray  # int32 [L]
  unlabelled_images: ArrayLike  # uint8 [U, H, W, C]
  test_images: ArrayLike  # uint8 [T, H, W, C]
  test_labels: np.ndarray  # int32 [T]
  val_images: ArrayLike  # uint8 [V, H, W, C], part of the train split; V = 0: no validation.
  val_labels: np.ndarray  # int32 [V]
  split_info: dict[str, Any]  # JSON-serialisable record of how the split was made.


# TFDS datasets read here, pinned to the version whose files `check_config` looks for.
_TFDS_VERSIONS = {
  'cifar10': '3.0.2',
  'cifar100': '3.0.2',
  'imagenet2012': '5.1.0',
  'imagenet2012_subset/1pct': '5.0.0',
  'imagenet2012_subset/10pct': '5.0.0',
}
# ImageNet label fractions with a canonical labelled subset (SimCLR, used by its successors).
_IMAGENET_SUBSETS = {0.01: 'imagenet2012_subset/1pct', 0.1: 'imagenet2012_subset/10pct'}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# TFDS features to read from ImageNet records: the encoded image only, or the label only.
if tfds is not None:
  _ENCODED_IMAGE = tfds.decode.PartialDecoding(
    {'image': True}, decoders={'image': tfds.decode.SkipDecoding()}
  )
  _LABEL = tfds.decode.PartialDecoding({'label': True})
  _LABEL_AND_FILE_NAME = tfds.decode.PartialDecoding({'label': True, 'file_name': True})
# The validation split is the same for every `config.seed`: its choice has its own seed.
_VALIDATION_SEED = 0


@dataclasses.dataclass(frozen=True)
class _Cifar:
  name: str
  num_classes: int
  mean: tuple[float, float, float]  # Pixel statistics of the train split.
  std: tuple[float, float, float]
  train_per_class: int  # Every class has this many train images.


_CIFAR10 = _Cifar('cifar10', 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 5000)
_CIFAR100 = _Cifar('cifar100', 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 500)


def select_labelled(
  labels: np.ndarray,
  num_classes: int,
  *,
  seed: int,
  labels_per_class: int | None = None,
  label_fraction: float | None = None,
) -> np.ndarray:
  """Seeded stratified choice of the labelled examples.

  Args:
    labels: int [N] classes in [0, num_classes).
    num_classes: number of classes.
    seed: seed of the choice.
    labels_per_class: take exactly this many examples of every class; or
    label_fraction: take round(label_fraction * n_c) examples of a class with n_c examples,
      but at least one (the split must see every class).

  Returns:
    Sorted int64 [L] indices into `labels`.
  """
  rng = np.random.default_rng(seed)
  chosen = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    n = len(members)
    k = labels_per_class if label_fraction is None else min(n, max(1, round(label_fraction * n)))
    if k > n:
      raise ValueError(
        f'labels_per_class={k} exceeds the {n} examples of class {c}: use at most '
        f'{np.bincount(labels, minlength=num_classes).min()}.'
      )
    chosen.append(rng.choice(members, k, replace=False))
  return np.sort(np.concatenate(chosen))


def validation_size(config: ml_collections.ConfigDict, num_train: int = 0) -> int:
  """The number of train images held out for validation: `config.val_size`, or when None the
  dataset's standard: 10,000 on ImageNet (a minival), else 10% of the `num_train` train
  images, rounded up (digits: 144, CIFAR: 5,000)."""
  if config.val_size is not None:
    return config.val_size
  return 10_000 if config.dataset == 'imagenet2012' else -(-num_train // 10)


def split_validation(labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """The fixed stratified validation part of a train split with int `labels` [N].

  Returns:
    (validation, rest): sorted int64 indices [size] and [N - size] into `labels`, the same for
    every seed (scikit-learn's `train_test_split`, random_state=_VALIDATION_SEED).
  """
  indices = np.arange(len(labels))
  if not size:
    return indices[:0], indices
  try:
    rest, validation = model_selection.train_test_split(
      indices, test_size=size, stratify=labels, random_state=_VALIDATION_SEED
    )
  except ValueError as error:  # Too small, too large, or a class of a single image.
    raise ValueError(
      f'config.val_size={size} is no stratified part of the {len(labels)} train images '
      f'({" ".join(str(error).split())}): set --config.val_size=0 (no validation split) or '
      'a size that leaves every class images on both sides.'
    ) from None
  return np.sort(validation), np.sort(rest)


class DecodedImages:
  """Random access to the images of a TFDS split, each decoded when it is read.

  Each image's shorter side is resized to `size` and its centre square cut out, so the
  dataset reads as uint8 [N, size, size, 3]; random-resized crops are then taken from this
  stored square on device. A batch is decoded by a pool of threads (PIL releases the GIL).
  """

  def __init__(self, source, size: int, records: np.ndarray | None = None):
    """`source[i]` is a dict with the encoded image bytes under 'image' (and nothing else);
    image i is `source[records[i]]` (default: every record, in order)."""
    self._source = source
    self._size = size
    self._records = np.arange(len(source)) if records is None else np.asarray(records)
    self.shape = (len(self._records), size, size, 3)
    self.dtype = np.dtype(np.uint8)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, indices: np.ndarray) -> np.ndarray:
    """int indices of any shape -> uint8 [*indices.shape, size, size, 3]."""
    indices = np.asarray(indices)
    images = np.empty((indices.size, *self.shape[1:]), np.uint8)
    with futures.ThreadPoolExecutor() as pool:
      for row, image in enumerate(pool.map(self._read, indices.ravel())):
        images[row] = image
    return images.reshape(indices.shape + self.shape[1:])

  def _read(self, index: int) -> np.ndarray:
    return decode_center_square(self._source[int(self._records[index])]['image'], self._size)


def decode_center_square(encoded: bytes, size: int) -> np.ndarray:
  """Decodes an image, resizes its shorter side to `size` and cuts out the centre square.

  Returns:
    uint8 [size, size, 3].
  """
  with Image.open(io.BytesIO(encoded)) as image:
    image.draft('RGB', (size, size))  # JPEG: decode at 1/2, 1/4, 1/8 scale while still >= size.
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    square = image.convert('RGB').resize(
      (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
    )
  return np.asarray(square)


def _data_dir(config: ml_collections.ConfigDict) -> str:
  """Where TFDS data sets are read; every TFDS data set's loader asks for it first."""
  require(
    tfds is not None,
    f"config.dataset='{config.dataset}' is read with TensorFlow Datasets, which is not "
    'installed: pip install tensorflow-datasets (digits and .npz data need none).',
  )
  return config.data_dir or tfds_constants.get_default_data_dir()


def _require_prepared(
  name: str, data_dir: str, *, random_access: bool = False, needed_for: str = ''
) -> None:
  """Raises ValueError unless TFDS dataset `name` is built in `data_dir`; reads no data.
  `needed_for`: why the run reads it, when the config does not name it (in the message)."""
  version_dir = epath.Path(data_dir) / name / _TFDS_VERSIONS[name]
  build = f'tfds build {name}{" --file_format=array_record" * random_access} --data_dir={data_dir}'
  if not (version_dir / 'dataset_info.json').exists():
    raise ValueError(
      f"dataset '{name}' is not prepared in {data_dir} (no {version_dir}/dataset_info.json)"
      f"{needed_for}: run '{build}' on a machine with internet (or pass --config.data_dir=DIR "
      'where it is).'
    )
  if random_access:
    info = json.loads((version_dir / 'dataset_info.json').read_text())
    stored = {info.get('fileFormat', 'tfrecord'), *info.get('alternativeFileFormats', ())}
    if not stored & {f.value for f in file_adapters.FileFormat.with_random_access()}:
      raise ValueError(
        f"dataset '{name}' in {data_dir} is stored as {', '.join(sorted(stored))}, which has no "
        f"random access: run 'tfds convert_format --dataset_version_dir={version_dir} "
        f"--out_file_format=array_record' or '{build}'."
      )


def _tfds_arrays(name: str, split: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole TFDS split in memory: uint8 images [N, H, W, C], int32 labels [N]."""
  images, labels = tfds.as_numpy(
    tfds.load(
      f'{name}:{_TFDS_VERSIONS[name]}',
      split=split,
      data_dir=data_dir,
      batch_size=-1,
      as_supervised=True,
      download=False,
    )
  )
  return images, labels.astype(np.int32)


def _tfds_source(name: str, split: str, data_dir: str, features: tfds.decode.PartialDecoding):
  """Random access to `features` of the records of a TFDS split (array_record format)."""
  return tfds.data_source(
    f'{name}:{_TFDS_VERSIONS[name]}',
    split=split,
    data_dir=data_dir,
    download=False,
    decoders=features,
  )


def _read_records(source, indices) -> list[dict]:
  """`[source[i] for i in indices]`, read by a pool of threads."""
  with futures.ThreadPoolExecutor() as pool:
    return list(pool.map(lambda i: source[int(i)], indices))


def _read_labels(name: str, split: str, data_dir: str) -> np.ndarray:
  """All labels of a TFDS split: int32 [N]. Reads whole records, so seconds per 10k images."""
  source = _tfds_source(name, split, data_dir, _LABEL)
  return np.array([r['label'] for r in _read_records(source, range(len(source)))], np.int32)


def _labels_and_file_names(source, indices) -> tuple[np.ndarray, list[str]]:
  """int32 labels [N] and file names of the records `indices` [N] of a source opened with
  `_LABEL_AND_FILE_NAME`. Reads whole records."""
  records = _read_records(source, indices)
  names = [r['file_name'] for r in records]
  return np.array([r['label'] for r in records], np.int32), [
    n.decode() if isinstance(n, bytes) else str(n) for n in names
  ]


def _split_info(
  config: ml_collections.ConfigDict,
  labelled_labels: np.ndarray,
  num_classes: int,
  *,
  num_unlabelled: int,
  num_test: int,
  num_val: int,
  **extra: Any,
) -> dict[str, Any]:
  return dict(
    dataset=config.dataset,
    seed=config.seed,
    labels_per_class=config.labels_per_class,
    label_fraction=config.label_fraction,
    num_labelled=len(labelled_labels),
    num_unlabelled=num_unlabelled,
    num_test=num_test,
    num_val=num_val,
    labelled_per_class=np.bincount(labelled_labels, minlength=num_classes).tolist(),
    **extra,
  )


def _split_in_memory(
  config: ml_collections.ConfigDict,
  num_classes: int,
  mean: tuple[float, ...],
  std: tuple[float, ...],
  train: tuple[np.ndarray, np.ndarray],
  test: tuple[np.ndarray, np.ndarray],
) -> DatasetSplits:
  """Splits in-memory (images [N, H, W, C], labels [N]) train data into validation
  (`split_validation`), labelled (`select_labelled` of the rest) and unlabelled images."""
  images, labels = train
  val, rest = split_validation(labels, validation_size(config, len(labels)))
  labelled = rest[
    select_labelled(
      labels[rest],
      num_classes,
      seed=config.seed,
      labels_per_class=config.labels_per_class,
      label_fraction=config.label_fraction,
    )
  ]
  return DatasetSplits(
    name=config.dataset,
    num_classes=num_classes,
    image_shape=tuple(images.shape[1:]),
    mean=mean,
    std=std,
    labelled_images=images[labelled],
    labelled_labels=labels[labelled],
    unlabelled_images=images[np.setdiff1d(rest, labelled)],
    test_images=test[0],
    test_labels=test[1],
    val_images=images[val],
    val_labels=labels[val],
    split_info=_split_info(
      config,
      labels[labelled],
      num_classes,
      num_unlabelled=len(rest) - len(labelled),
      num_test=len(test[1]),
      num_val=len(val),
      labelled_indices=labelled.tolist(),  # Indices into the train split, as val_indices.
      val_indices=val.tolist(),
    ),
  )


def _digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """scikit-learn digits as (uint8 images [N, 8, 8, 1], int32 labels [N]) for train and test.

  The test split is a fixed stratified 20% (random_state=0), the same for every seed.
  """
  digits = sk_datasets.load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]  # 0..16 -> 0..255
  labels = digits.target.astype(np.int32)
  train, test = model_selection.train_test_split(
    np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0
  )
  return (images[train], labels[train]), (images[test], labels[test])


def _check_digits(config: ml_collections.ConfigDict) -> None:
  _check_in_memory(config, _digits()[0][1], 10)


def _load_digits(config: ml_collections.ConfigDict) -> DatasetSplits:
  train, test = _digits()
  pixels = train[0] / 255  # Statistics of the whole train split: labelled and unlabelled.
  return _split_in_memory(config, 10, (float(pixels.mean()),), (float(pixels.std()),), train, test)


_NPZ_KEYS = ('train_images', 'train_labels', 'test_images', 'test_labels')
_NPZ_CONTENT = (
  'an np.savez archive of uint8 train_images, test_images [N, H, W, C] and '
  'integer train_labels, test_labels [N]'
)


@functools.lru_cache(maxsize=2)
def _read_npz(
  path: str, mtime: float
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """Checked (images, labels) of train and test from an .npz (see the module docstring)."""
  del mtime  # Part of the cache key: a rewritten file is read again.
  try:
    arrays = _npz_arrays(path)
  except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
    reason = getattr(error, 'strerror', None) or error
    raise _not_npz(path, f'it cannot be read ({reason})') from None
  for split in ('train', 'test'):
    check_images(arrays[f'{split}_images'], arrays[f'{split}_labels'], f'{path}: {split}')
  if arrays['test_images'].shape[1:] != arrays['train_images'].shape[1:]:
    raise ValueError(
      f'{path}: test images are {arrays["test_images"].shape[1:]} but train images '
      f'{arrays["train_images"].shape[1:]}: both splits need one image shape.'
    )
  check_labels(arrays['train_labels'], arrays['test_labels'], path)
  return (
    (arrays['train_images'], arrays['train_labels'].astype(np.int32)),
    (arrays['test_images'], arrays['test_labels'].astype(np.int32)),
  )


def _not_npz(path: str, problem: str) -> ValueError:
  return ValueError(f'{path}: {problem}: it must be {_NPZ_CONTENT}.')


def _npz_arrays(path: str) -> dict[str, np.ndarray]:
  """The arrays `_NPZ_KEYS` of the .npz archive at `path`, never unpickled."""
  with open(path, 'rb') as file:
    start = file.read(len(np.lib.format.MAGIC_PREFIX))
  if start == np.lib.format.MAGIC_PREFIX:
    raise _not_npz(path, 'it is a single .npy array (np.save), not an .npz archive')
  if not zipfile.is_zipfile(path):
    kind = (
      'empty'
      if not start
      else 'truncated or damaged'
      if start.startswith(b'PK')
      else 'not a zip archive (text or another format)'
    )
    raise _not_npz(path, f'it is {kind}')
  with np.load(path, allow_pickle=False) as data:
    missing = [k for k in _NPZ_KEYS if k not in data]
    if missing:
      raise ValueError(
        f'config.data_file={path} lacks {missing}: save it with '
        f'np.savez(path, {", ".join(f"{k}=..." for k in _NPZ_KEYS)}).'
      )
    return {k: _npz_array(data, k, path) for k in _NPZ_KEYS}


def _npz_array(data, key: str, path: str) -> np.ndarray:
  """`data[key]` of an open np.load archive; ValueError naming the key if it is no plain array."""
  try:
    array = data[key]
  except ValueError as error:  # numpy refuses object arrays without allow_pickle.
    problem = (
      f'{key} holds Python objects, which are not unpickled'
      if 'allow_pickle' in str(error)
      else f'{key} cannot be read ({error})'
    )
    raise _not_npz(path, problem) from None
  if not isinstance(array, np.ndarray):  # np.load returns a member without the .npy header raw.
    raise _not_npz(path, f'{key} is not a saved numpy array')
  return array


def check_images(images: np.ndarray, labels: np.ndarray, where: str) -> None:
  """Raises ValueError unless images are uint8 [N, H, W, 1 or 3], N, H, W > 0, labels int [N]."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(
      f'{where} images have shape {images.shape}; expected [N, H, W, C] with C = '
      '1 or 3 (add a channel axis to grayscale images with images[..., None]).'
    )
  if not images.size:
    raise ValueError(
      f'{where} images have shape {images.shape}, which holds no pixels; expected '
      '[N, H, W, C] with at least one image of at least one pixel.'
    )
  if images.dtype != np.uint8:
    raise ValueError(
      f'{where} images have dtype {images.dtype}; expected uint8 in 0..255 '
      '(from floats in [0, 1]: np.round(images * 255).astype(np.uint8)).'
    )
  if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
      f'{where} labels have shape {labels.shape} and dtype {labels.dtype}; '
      f'expected integers [{len(images)}], one class index per image.'
    )


def check_labels(train_labels: np.ndarray, test_labels: np.ndarray, where: str) -> None:
  """Raises ValueError unless int labels [N] are 0..C-1 with every class in `train_labels`.

  C = max(train_labels) + 1; test labels must be classes of the train labels. Memory in
  proportion to the number of labels, whatever their values (a label 10**12 is no bincount).
  """
  must = 'labels must be 0..C-1 with every class in train_labels'
  if train_labels.min() < 0:
    raise ValueError(
      f'{where}: train_labels has {_describe(train_labels[train_labels < 0])}: '
      f'{must} (drop or remap the negative labels).'
    )
  classes = np.unique(train_labels).tolist()  # Sorted Python ints; classes[-1] = C - 1.
  if len(classes) != classes[-1] + 1:
    first_missing = next(c for c, present in enumerate(classes) if c != present)
    raise ValueError(
      f'{where}: train_labels has {_describe(train_labels[train_labels > first_missing])} but '
      f'{_describe_missing(classes)} no train image: {must} (drop or remap the stray labels).'
    )
  outside = (test_labels < 0) | (test_labels > classes[-1])
  if outside.any():
    raise ValueError(
      f'{where}: test_labels has {_describe(test_labels[outside])} but train_labels has classes '
      f'0..{classes[-1]} only: every test label must be a class with train images (drop or '
      'remap the others).'
    )


def _describe(labels: np.ndarray, shown: int = 5) -> str:
  """E.g. '1 label equal to 1000000' or '40 labels with values 3, 7, 8, 9, 10, ...'."""
  values = np.unique(labels)
  listed = ', '.join(map(str, values[:shown])) + ', ...' * (len(values) > shown)
  return f'{len(labels)} label{"s" * (len(labels) != 1)} ' + (
    f'equal to {values[0]}' if len(values) == 1 else f'with values {listed}'
  )


def _describe_missing(classes: list[int], shown: int = 5) -> str:
  """The classes below classes[-1] missing from sorted, distinct `classes`, with their verb.

  E.g. 'class 3 has', 'classes 11..999999 have' or 'classes 1..3, 5, ... (48 of the 58) have'.
  """
  gaps = [(a + 1, b - 1) for a, b in zip([-1, *classes[:-1]], classes) if b - a > 1]
  num_missing = classes[-1] + 1 - len(classes)
  if num_missing == 1:
    return f'class {gaps[0][0]} has'
  ranges = ', '.join(f'{a}..{b}' if b > a else f'{a}' for a, b in gaps[:shown])
  ranges += ', ...' * (len(gaps) > shown)
  total = f' ({num_missing} of the {classes[-1] + 1})' * (len(gaps) > 1)
  return f'classes {ranges}{total} have'


def _npz(config: ml_collections.ConfigDict):
  path = config.data_file
  if not path or not epath.Path(path).is_file():
    raise ValueError(
      f"config.data_file={path!r} is not a file: dataset='npz' reads your data "
      f'from {_NPZ_CONTENT}, e.g. --config.data_file=/data/mine.npz.'
    )
  return _read_npz(str(path), epath.Path(path).stat().mtime)


def _check_npz(config: ml_collections.ConfigDict) -> None:
  (_, train_labels), _ = _npz(config)
  _check_in_memory(config, train_labels, num_classes(config))


def _load_npz(config: ml_collections.ConfigDict) -> DatasetSplits:
  train, test = _npz(config)
  pixels = train[0].reshape(-1, train[0].shape[-1]) / 255
  return _split_in_memory(
    config,
    num_classes(config),
    tuple(map(float, pixels.mean(0))),
    tuple(map(float, pixels.std(0))),
    train,
    test,
  )


def _check_cifar(cifar: _Cifar, config: ml_collections.ConfigDict) -> None:
  # Labels as balanced as CIFAR's: the stratified split takes as many of each class.
  _check_in_memory(
    config, np.repeat(np.arange(cifar.num_classes), cifar.train_per_class), cifar.num_classes
  )
  _require_prepared(cifar.name, _data_dir(config))


def _load_cifar(cifar: _Cifar, config: ml_collections.ConfigDict) -> DatasetSplits:
  data_dir = _data_dir(config)
  train, test = (_tfds_arrays(cifar.name, split, data_dir) for split in ('train', 'test'))
  return _split_in_memory(config, cifar.num_classes, cifar.mean, cifar.std, train, test)


def _check_imagenet(config: ml_collections.ConfigDict) -> None:
  if config.label_fraction not in _IMAGENET_SUBSETS:
    raise ValueError(
      f'config.label_fraction={config.label_fraction} (config.labels_per_class='
      f'{config.labels_per_class}) is not supported on imagenet2012: set label_fraction to '
      f'0.01 or 0.1 (the SimCLR subsets) and labels_per_class to None.'
    )
  if not (isinstance(config.decode_size, int) and config.decode_size > 0):
    raise ValueError(
      f'config.decode_size={config.decode_size!r} must be a positive integer, e.g. 256.'
    )
  data_dir = _data_dir(config)
  for name in ('imagenet2012', _IMAGENET_SUBSETS[config.label_fraction]):
    _require_prepared(name, data_dir, random_access=True)
  size = validation_size(config)
  if size and not _minival_file(data_dir, size).exists():  # To be drawn: both subsets are read.
    for name in _IMAGENET_SUBSETS.values():
      _require_prepared(
        name,
        data_dir,
        random_access=True,
        needed_for=f', which the minival of {size} images, drawn at the first start, must '
        'avoid (or set --config.val_size=0)',
      )


def _load_imagenet(config: ml_collections.ConfigDict) -> DatasetSplits:
  """The SimCLR protocol: the labelled subset's images are among the unlabelled ones too; the
  minival (validation) images are in neither."""
  data_dir = _data_dir(config)
  subset = _IMAGENET_SUBSETS[config.label_fraction]
  images = functools.partial(_imagenet_images, data_dir=data_dir, size=config.decode_size)
  source = _tfds_source(subset, 'train', data_dir, _LABEL_AND_FILE_NAME)
  labelled_labels, labelled_names = _labels_and_file_names(source, range(len(source)))
  size = validation_size(config)
  minival = _imagenet_minival(data_dir, size) if size else dict(indices=[], labels=[])
  if size and not set(labelled_names).isdisjoint(minival['file_names']):
    raise ValueError(
      f"{_minival_file(data_dir, size)} holds images of {subset}: it is not this code's "
      'minival (or the data changed): delete it, and the next start draws the minival again.'
    )
  val = np.array(minival['indices'], np.int64)
  train = _tfds_source('imagenet2012', 'train', data_dir, _ENCODED_IMAGE)
  unlabelled_images = DecodedImages(
    train, config.decode_size, np.delete(np.arange(len(train)), val)
  )
  test_labels = _read_labels('imagenet2012', 'validation', data_dir)
  return DatasetSplits(
    name=config.dataset,
    num_classes=1000,
    image_shape=(config.decode_size, config.decode_size, 3),
    mean=_IMAGENET_MEAN,
    std=_IMAGENET_STD,
    labelled_images=images(subset, 'train'),
    labelled_labels=labelled_labels,
    unlabelled_images=unlabelled_images,
    test_images=images('imagenet2012', 'validation'),
    test_labels=test_labels,
    val_images=DecodedImages(train, config.decode_size, val),
    val_labels=np.array(minival['labels'], np.int32),
    split_info=_split_info(
      config,
      labelled_labels,
      1000,
      num_unlabelled=len(unlabelled_images),
      num_test=len(test_labels),
      num_val=len(val),
      protocol=f'labelled: TFDS {subset} train; unlabelled: imagenet2012 train but the '
      'validation images, labelled images included (SimCLR protocol); validation: a minival of '
      'imagenet2012 train images in neither SimCLR subset; test: imagenet2012 validation',
      tfds_versions={name: _TFDS_VERSIONS[name] for name in ('imagenet2012', subset)},
      val_indices=val.tolist(),  # Records of imagenet2012 train.
    ),
  )


def _minival_file(data_dir: str, size: int) -> epath.Path:
  """Where the minival of `size` images is cached: DATA_DIR/semi_ssl/."""
  version = _TFDS_VERSIONS['imagenet2012']
  return epath.Path(data_dir) / 'semi_ssl' / f'imagenet2012-{version}-minival-{size}.json'


def _imagenet_minival(data_dir: str, size: int) -> dict[str, list]:
  """The minival of `size` imagenet2012 train images, {'indices': sorted record indices,
  'labels', 'file_names'}: read from `_minival_file`, or drawn (`draw_minival`) and cached
  there, so that only the first start reads train records (a data_dir that cannot be written
  to: every start)."""
  path = _minival_file(data_dir, size)
  if path.exists():
    return json.loads(path.read_text())
  logging.info('Drawing the ImageNet minival of %d images (once: it is cached in %s).', size, path)
  minival = draw_minival(
    _tfds_source('imagenet2012', 'train', data_dir, _LABEL_AND_FILE_NAME),
    [_tfds_source(s, 'train', data_dir, _LABEL_AND_FILE_NAME) for s in _IMAGENET_SUBSETS.values()],
    size,
  )
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own: every host of a pod draws the same minival and may write it at once.
    partial = path.with_name(f'{path.name}.{uuid.uuid4().hex}.tmp')
    partial.write_text(json.dumps(minival))
    partial.replace(path)
  except OSError as error:
    logging.warning('Cannot cache the minival in %s (%s): every start draws it.', path, error)
  return minival


def draw_minival(train, subsets, size: int, *, num_classes: int = 1000, chunk: int = 4096):
  """The first `size` records of a fixed permutation of `train` (seed _VALIDATION_SEED) whose
  file names are in none of `subsets`, at most ceil(size / num_classes) of a class (10,000
  of ImageNet: 10 of each class). `train`, `subsets`: sources opened with
  `_LABEL_AND_FILE_NAME`. Reads every record of the subsets (141k for ImageNet's) and a few
  times `size` train records, images included: minutes, once.

  Returns:
    {'indices': sorted record indices of `train` [size], 'labels' [size], 'file_names' [size]}.
  """
  excluded = set()
  for subset in subsets:
    excluded.update(_labels_and_file_names(subset, range(len(subset)))[1])
  per_class = -(-size // num_classes)
  taken = np.zeros(num_classes, np.int64)
  chosen = []  # (index, label, file name) in the order of the permutation.
  order = np.random.default_rng(_VALIDATION_SEED).permutation(len(train))
  for start in range(0, len(order), chunk):
    block = order[start : start + chunk]
    for index, label, name in zip(block, *_labels_and_file_names(train, block)):
      if name not in excluded and taken[label] < per_class:
        taken[label] += 1
        chosen.append((int(index), int(label), name))
    if len(chosen) >= size:
      indices, labels, names = zip(*sorted(chosen[:size]))
      return dict(indices=list(indices), labels=list(labels), file_names=list(names))
  raise ValueError(
    f'config.val_size={size}: the train split has only {len(chosen)} images in no labelled '
    f'subset with at most {per_class} of a class: set a smaller --config.val_size (0: none).'
  )


def _imagenet_images(name: str, split: str, *, data_dir: str, size: int) -> DecodedImages:
  return DecodedImages(_tfds_source(name, split, data_dir, _ENCODED_IMAGE), size)


def _check_in_memory(config: ml_collections.ConfigDict, labels: np.ndarray, classes: int) -> None:
  """`_check_labels_per_class` on the train `labels` [N] left beside the validation split."""
  size = validation_size(config, len(labels))
  rest = split_validation(labels, size)[1]
  _check_labels_per_class(config, int(np.bincount(labels[rest], minlength=classes).min()), size)


def _check_labels_per_class(
  config: ml_collections.ConfigDict, smallest_class: int, num_val: int
) -> None:
  """Raises ValueError unless every class has `labels_per_class` train images (one for
  `label_fraction`) outside the `num_val` validation images; `smallest_class`: the fewest."""
  outside = f' outside the {num_val} validation images' if num_val else ''
  smaller = ' (or set a smaller --config.val_size; 0: none)' if num_val else ''
  if config.labels_per_class is not None and config.labels_per_class > smallest_class:
    raise ValueError(
      f'config.labels_per_class={config.labels_per_class} exceeds the {smallest_class} train '
      f'images of the smallest {config.dataset} class{outside}: use at most '
      f'{smallest_class}{smaller}.'
    )
  if not smallest_class:  # Only a validation split can take every image of a class.
    raise ValueError(
      f'config.val_size={config.val_size}: the {num_val} validation images take every train '
      f'image of a {config.dataset} class, which leaves it no labelled image: set a smaller '
      '--config.val_size (0: none).'
    )


_Check = Callable[[ml_collections.ConfigDict], None]
_Load = Callable[[ml_collections.ConfigDict], DatasetSplits]
_DATASETS: dict[str, tuple[_Check, _Load]] = {
  'digits': (_check_digits, _load_digits),
  'cifar10': (functools.partial(_check_cifar, _CIFAR10), functools.partial(_load_cifar, _CIFAR10)),
  'cifar100': (
    functools.partial(_check_cifar, _CIFAR100),
    functools.partial(_load_cifar, _CIFAR100),
  ),
  'imagenet2012': (_check_imagenet, _load_imagenet),
  'npz': (_check_npz, _load_npz),
}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key and the fix for data settings that cannot load.

  Cheap: reads no images, only (for TFDS datasets) whether the dataset's files exist.
  """
  if config.dataset not in _DATASETS:
    raise ValueError(
      f"config.dataset='{config.dataset}' is unknown{closest_key(config.dataset, _DATASETS)}; "
      f'valid datasets: {", ".join(sorted(_DATASETS))}.'
    )
  labels_per_class, label_fraction = config.labels_per_class, config.label_fraction
  if (labels_per_class is None) == (label_fraction is None):
    raise ValueError(
      f'config.labels_per_class={labels_per_class} and config.label_fraction={label_fraction}: '
      'set exactly one of them: give only one of --config.labels_per_class=N and '
      '--config.label_fraction=F (it unsets the other), or unset one with e.g. '
      '--config.labels_per_class=None.'
    )
  if labels_per_class is not None and labels_per_class < 1:
    raise ValueError(f'config.labels_per_class={labels_per_class} must be at least 1.')
  if label_fraction is not None and not 0 < label_fraction <= 1:
    raise ValueError(f'config.label_fraction={label_fraction} is outside (0, 1]: use e.g. 0.1.')
  val_size = config.val_size
  if val_size is not None and not (isinstance(val_size, int) and val_size >= 0):
    raise ValueError(
      f'config.val_size={val_size!r} must be an integer >= 0 (0: no validation split) or None '
      "(the dataset's standard size)."
    )
  _DATASETS[config.dataset][0](config)


def num_classes(config: ml_collections.ConfigDict) -> int:
  """The number of classes of `config.dataset`, known without loading its images."""
  if config.dataset == 'npz':
    return int(_npz(config)[0][1].max()) + 1  # Checked: every class has train images.
  return {'digits': 10, 'cifar10': 10, 'cifar100': 100, 'imagenet2012': 1000}[config.dataset]


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of the stored images of `config.dataset`, known without loading them."""
  if config.dataset == 'npz':
    return tuple(_npz(config)[0][0].shape[1:])
  return {
    'digits': (8, 8, 1),
    'cifar10': (32, 32, 3),
    'cifar100': (32, 32, 3),
    'imagenet2012': (config.decode_size, config.decode_size, 3),
  }[config.dataset]


def load(config: ml_collections.ConfigDict) -> DatasetSplits:
  """Checks `config` (see `check_config`), then loads and splits `config.dataset`."""
  check_config(config)
  return _DATASETS[config.dataset][1](config)
