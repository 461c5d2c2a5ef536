"""Images per second per CPU core of the ImageNet input path, and the cores that feed a step.

    python -m benchmarks.bench_input                       # 200 JPEGs of 500x375, size 256
    python -m benchmarks.bench_input --images 1000 --target 3000

The path is the trainer's (`datasets.DecodedImages`, which `pipeline.host_batch` indexes): one
record read from an ArrayRecord file (TFDS's random-access format), the JPEG decoded
(PIL, `draft` scaling), the shorter side resized to the configs' `decode_size` (256) and the
centre square kept (`datasets.decode_center_square`); random-resized crops are then taken on
the device. The JPEGs are generated at ImageNet's typical size (500x375, quality 90, smooth
content with noise: about the bytes of a real photo). Not timed: the parse of TFDS's
tf.train.Example around each image (the records here hold the JPEG bytes alone).

Rows: read, decode + crop, both on one thread (images/s per core); `DecodedImages` batches on
its thread pool over every core; the cores needed for `--target` images/s at the one-core rate.
Each time is the best of REPEATS passes over the images.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import tempfile
import time

import numpy as np
from array_record.python import array_record_data_source, array_record_module
from PIL import Image

from semi_ssl.data import datasets

REPEATS = 3


def make_jpegs(num: int, width: int, height: int, seed: int = 0) -> list[bytes]:
  """`num` JPEGs (quality 90) of smooth random colour fields with pixel noise, like photos in
  size and entropy."""
  rng = np.random.default_rng(seed)
  jpegs = []
  for _ in range(num):
    coarse = Image.fromarray(rng.integers(0, 256, (height // 25, width // 25, 3), np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.int16)
    noisy = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, 'JPEG', quality=90)
    jpegs.append(buffer.getvalue())
  return jpegs


class ArrayRecordImages:
  """`source[i] -> {'image': JPEG bytes}` from an ArrayRecord file: what DecodedImages reads."""

  def __init__(self, path: str):
    self._source = array_record_data_source.ArrayRecordDataSource([path])

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    return {'image': self._source[index]}


def write_array_record(path: str, records: list[bytes]) -> None:
  writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
  for record in records:
    writer.write(record)
  writer.close()


def best_seconds(run) -> float:
  """The shortest of REPEATS timed calls of `run()`."""
  times = []
  for _ in range(REPEATS):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return min(times)


def measure(num_images: int, width: int, height: int, size: int, target: float) -> dict:
  """{'jpeg_kib', 'read_per_core', 'decode_per_core', 'per_core', 'pool', 'cores', ...}: images/s
  of each part on one thread, of DecodedImages on its pool, and the cores `target` needs."""
  jpegs = make_jpegs(num_images, width, height)
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, 'images.array_record')
    write_array_record(path, jpegs)
    source = ArrayRecordImages(path)
    indices = np.arange(num_images)
    read = best_seconds(lambda: [source[int(i)] for i in indices])
    decode = best_seconds(lambda: [datasets.decode_center_square(j, size) for j in jpegs])
    images = datasets.DecodedImages(source, size)
    pool = best_seconds(lambda: images[indices])
  per_core = num_images / (read + decode)
  return dict(
    images=num_images,
    jpeg_kib=sum(map(len, jpegs)) / num_images / 1024,
    read_per_core=num_images / read,
    decode_per_core=num_images / decode,
    per_core=per_core,
    pool=num_images / pool,
    cpu_count=os.cpu_count(),
    target=target,
    cores=math.ceil(target / per_core),
  )


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=200)
  parser.add_argument('--width', type=int, default=500)
  parser.add_argument('--height', type=int, default=375)
  parser.add_argument('--size', type=int, default=256, help="The configs' decode_size.")
  parser.add_argument('--target', type=float, default=3000, help='Images/s to feed.')
  args = parser.parse_args(argv)
  r = measure(args.images, args.width, args.height, args.size, args.target)
  print(
    f'{r["images"]} JPEGs {args.width}x{args.height}, {r["jpeg_kib"]:.0f} KiB each -> {args.size}'
  )
  print(f'read (ArrayRecord)      {r["read_per_core"]:>9.0f} images/s per core')
  print(f'decode + crop (PIL)     {r["decode_per_core"]:>9.0f} images/s per core')
  print(f'read + decode + crop    {r["per_core"]:>9.0f} images/s per core')
  print(f'DecodedImages, {r["cpu_count"]} cores  {r["pool"]:>9.0f} images/s')
  print(f'cores for {r["target"]:.0f} images/s: {r["cores"]}')
  return r


if __name__ == '__main__':
  main()
