"""Daino on CIFAR-100 with a ResNet-18, 25 labels per class by default (4 / 25 / 100 used).

python -m semi_ssl.main --config=configs/daino/cifar100.py --workdir=/tmp/daino_cifar100 \
    --config.labels_per_class=4

configs/daino/cifar10.py on CIFAR-100: every other value, and its source, is described there.
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  cifar10 = runpy.run_path(os.path.join(os.path.dirname(__file__), 'cifar10.py'))
  c = cifar10['get_config']()
  c.dataset = 'cifar100'
  c.labels_per_class = 25  # 4, 25 or 100 per class.
  return c
