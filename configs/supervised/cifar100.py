"""Supervised baseline on CIFAR-100: configs/supervised/cifar10.py on CIFAR-100, 25 per class.

python -m semi_ssl.main --config=configs/supervised/cifar100.py --workdir=/tmp/sup_cifar100 \
    [--config.labels_per_class=4|25|100]

Every other value, and its source, is that of cifar10.py; the lower bound for
configs/suave/cifar100.py.
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  cifar10 = runpy.run_path(os.path.join(os.path.dirname(__file__), 'cifar10.py'))
  c = cifar10['get_config']()
  c.dataset = 'cifar100'
  c.labels_per_class = 25  # 4, 25 or 100 per class: the 400 / 2500 / 10000-label benchmarks.
  return c
