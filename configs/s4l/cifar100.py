"""S4L on CIFAR-100: cifar10.py's config (and sources) on CIFAR-100, 25 labels per class.

python -m semi_ssl.main --config=configs/s4l/cifar100.py:rotation --workdir=/tmp/s4l_cifar100
"""

import os
import runpy


def get_config(variant: str = 'rotation'):
  cifar10 = runpy.run_path(os.path.join(os.path.dirname(__file__), 'cifar10.py'))
  c = cifar10['get_config'](variant)
  c.dataset = 'cifar100'
  c.labels_per_class = 25
  return c
