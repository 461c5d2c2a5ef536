"""SimCLRv2 on CIFAR-100, 25 labels per class by default: pretrain -> finetune -> distill.

python -m semi_ssl.main --config=configs/simclrv2/cifar100.py --workdir=DIR \
    [--config.labels_per_class=4|25|100] [--config.model.width=2]

Every other value, and its source, is that of cifar10.py (the official code's CIFAR command
names CIFAR-10 only).
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
