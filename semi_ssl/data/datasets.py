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

The test split is fixed. The labelled subset of the train split is `config.labels_per_class`
images of every class, or a stratified `config.label_fraction` of it, chosen by `config.seed`
(ImageNet: the SimCLR 1% / 10% subsets); the rest of the train split is unlabelled.

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
import zipfile
import zlib

from etils import epath
import ml_collections
import numpy as np
from PIL import Image
from sklearn import datasets as sk_datasets
from sklearn import model_selection
import tensorflow_datasets as tfds
from tensorflow_datasets.core import constants as tfds_constants
from tensorflow_datasets.core import file_adapters

from semi_ssl.config_base import closest_key


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
_ENCODED_IMAGE = tfds.decode.PartialDecoding(
  {'image': True}, decoders={'image': tfds.decode.SkipDecoding()}
)
_LABEL = tfds.decode.PartialDecoding({'label': True})


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


class DecodedImages:
  """Random access to the images of a TFDS split, each decoded when it is read.

  Each image's shorter side is resized to `size` and its centre square cut out, so the
  dataset reads as uint8 [N, size, size, 3]; random-resized crops are then taken from this
  stored square on device. A batch is decoded by a pool of threads (PIL releases the GIL).
  """

  def __init__(self, source, size: int):
    """`source[i]` is a dict with the encoded image bytes under 'image' (and nothing else)."""
    self._source = source
    self._size = size
    self.shape = (len(source), size, size, 3)
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
    return decode_center_square(self._source[int(index)]['image'], self._size)


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
  return config.data_dir or tfds_constants.get_default_data_dir()


def _require_prepared(name: str, data_dir: str, *, random_access: bool = False) -> None:
  """Raises ValueError unless TFDS dataset `name` is built in `data_dir`; reads no data."""
  version_dir = epath.Path(data_dir) / name / _TFDS_VERSIONS[name]
  build = f'tfds build {name}{" --file_format=array_record" * random_access} --data_dir={data_dir}'
  if not (version_dir / 'dataset_info.json').exists():
    raise ValueError(
      f"dataset '{name}' is not prepared in {data_dir} (no {version_dir}/dataset_info.json): "
      f"run '{build}' on a machine with internet (or pass --config.data_dir=DIR where it is)."
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


def _read_labels(name: str, split: str, data_dir: str) -> np.ndarray:
  """All labels of a TFDS split: int32 [N]. Reads whole records, so seconds per 10k images."""
  source = _tfds_source(name, split, data_dir, _LABEL)
  with futures.ThreadPoolExecutor() as pool:
    return np.fromiter(
      pool.map(lambda i: source[i]['label'], range(len(source))), np.int32, len(source)
    )


def _split_info(
  config: ml_collections.ConfigDict,
  labelled_labels: np.ndarray,
  num_classes: int,
  *,
  num_unlabelled: int,
  num_test: int,
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
  """Splits in-memory (images [N, H, W, C], labels [N]) train data by `select_labelled`."""
  images, labels = train
  labelled = select_labelled(
    labels,
    num_classes,
    seed=config.seed,
    labels_per_class=config.labels_per_class,
    label_fraction=config.label_fraction,
  )
  return DatasetSplits(
    name=config.dataset,
    num_classes=num_classes,
    image_shape=tuple(images.shape[1:]),
    mean=mean,
    std=std,
    labelled_images=images[labelled],
    labelled_labels=labels[labelled],
    unlabelled_images=np.delete(images, labelled, axis=0),
    test_images=test[0],
    test_labels=test[1],
    split_info=_split_info(
      config,
      labels[labelled],
      num_classes,
      num_unlabelled=len(labels) - len(labelled),
      num_test=len(test[1]),
      labelled_indices=labelled.tolist(),
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
  _check_labels_per_class(config, int(np.bincount(_digits()[0][1]).min()))


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
  _check_labels_per_class(config, int(np.bincount(train_labels).min()))


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
  _check_labels_per_class(config, cifar.train_per_class)
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
  for name in ('imagenet2012', _IMAGENET_SUBSETS[config.label_fraction]):
    _require_prepared(name, _data_dir(config), random_access=True)


def _load_imagenet(config: ml_collections.ConfigDict) -> DatasetSplits:
  """The SimCLR protocol: the labelled subset's images are among the unlabelled ones too."""
  data_dir = _data_dir(config)
  subset = _IMAGENET_SUBSETS[config.label_fraction]
  images = functools.partial(_imagenet_images, data_dir=data_dir, size=config.decode_size)
  labelled_labels = _read_labels(subset, 'train', data_dir)
  unlabelled_images = images('imagenet2012', 'train')
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
    split_info=_split_info(
      config,
      labelled_labels,
      1000,
      num_unlabelled=len(unlabelled_images),
      num_test=len(test_labels),
      protocol=f'labelled: TFDS {subset} train; unlabelled: all of imagenet2012 train, '
      'labelled images included (SimCLR protocol); test: imagenet2012 validation',
      tfds_versions={name: _TFDS_VERSIONS[name] for name in ('imagenet2012', subset)},
    ),
  )


def _imagenet_images(name: str, split: str, *, data_dir: str, size: int) -> DecodedImages:
  return DecodedImages(_tfds_source(name, split, data_dir, _ENCODED_IMAGE), size)


def _check_labels_per_class(config: ml_collections.ConfigDict, smallest_class: int) -> None:
  if config.labels_per_class is not None and config.labels_per_class > smallest_class:
    raise ValueError(
      f'config.labels_per_class={config.labels_per_class} exceeds the {smallest_class} train '
      f'images of the smallest {config.dataset} class: use at most {smallest_class}.'
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
