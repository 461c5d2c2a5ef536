"""SeLa on CIFAR-100 with a ResNet-18 (CIFAR stem), 25 labels per class: configs/sela/cifar10.py's
recipe (its sources and departures) on CIFAR-100 ([O] cifar.sh: type=10 or 100, nothing else
changes):

python -m semi_ssl.main --config=configs/sela/cifar100.py --workdir=/tmp/sela_cifar100
"""

import os
import runpy


def get_config(form: str = ''):
  cifar10 = runpy.run_path(os.path.join(os.path.dirname(__file__), 'cifar10.py'))
  return cifar10['cifar_config']('cifar100', form)
