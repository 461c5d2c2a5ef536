"""Daino on ImageNet with 1% of the labels (the SimCLR subset), ResNet-50.

python -m semi_ssl.main --config=configs/daino/imagenet_1pct.py --workdir=DIR \
    [--config.data_dir=DIR]

configs/daino/imagenet_10pct.py on TFDS imagenet2012_subset/1pct; everything else, and the
sources (daino/scripts/train_1perc.sh differs from train_10perc.sh only in --labels_perc),
is described there.
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  imagenet_10pct = runpy.run_path(os.path.join(os.path.dirname(__file__), 'imagenet_10pct.py'))
  c = imagenet_10pct['get_config']()
  c.label_fraction = 0.01
  return c
