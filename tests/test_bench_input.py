"""The input-pipeline benchmark: it times the trainer's own reader on the images it wrote."""

import math

import numpy as np

from benchmarks import bench_input
from semi_ssl.data import datasets


def test_array_record_images_decode_as_the_trainer_decodes_them(tmp_path):
  jpegs = bench_input.make_jpegs(3, 50, 40)
  path = str(tmp_path / 'images.array_record')
  bench_input.write_array_record(path, jpegs)
  images = datasets.DecodedImages(bench_input.ArrayRecordImages(path), 16)
  read = images[np.array([2, 0])]
  assert read.shape == (2, 16, 16, 3)
  for row, index in enumerate([2, 0]):
    np.testing.assert_array_equal(read[row], datasets.decode_center_square(jpegs[index], 16))


def test_cores_needed_are_the_target_over_the_one_core_rate():
  r = bench_input.measure(num_images=4, width=50, height=40, size=16, target=1e6)
  assert 0 < r['per_core'] <= min(r['read_per_core'], r['decode_per_core'])
  assert r['cores'] == math.ceil(1e6 / r['per_core'])
