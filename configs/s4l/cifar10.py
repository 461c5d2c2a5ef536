"""S4L on CIFAR-10 with a ResNet-18 (CIFAR stem), 25 labels per class; the variant is the
config argument (default rotation):

python -m semi_ssl.main --config=configs/s4l/cifar10.py:rotation --workdir=/tmp/s4l_cifar10

The official code (github.com/google-research/s4l) has ImageNet recipes only: every S4L
value (losses, weights, copies, the optimiser) is imagenet_10pct.py's, with its sources and
departures; what CIFAR changes is ours: the backbone and stem, 32-pixel crops of (0.2, 1),
batch 256 + 64 labelled, 500 epochs, weight decay 5e-4, VAT's epsilon and xi for 32 x 32 x 3
images (the same size per pixel as ImageNet's).
"""

import math
import os
import runpy


def get_config(variant: str = 'rotation'):
  imagenet = runpy.run_path(os.path.join(os.path.dirname(__file__), 'imagenet_10pct.py'))
  c = imagenet['get_config'](variant)
  c.dataset = 'cifar10'
  c.label_fraction = None
  c.labels_per_class = 25
  c.batch_size = 256
  c.labelled_batch_size = 64
  c.num_epochs = 500.0
  c.eval_every = 5000
  c.checkpoint_every = 1000
  c.eval.crop_fraction = 1.0
  c.model.backbone = 'resnet18'
  c.model.stem = 'cifar'
  c.augment.global_size = 32
  c.augment.global_scale = (0.2, 1.0)
  c.optimizer.weight_decay = 5e-4
  pixels_ratio = math.sqrt(32 * 32 / (224 * 224))
  c.s4l.vat_epsilon = round(c.s4l.vat_epsilon * pixels_ratio, 2)
  c.s4l.vat_xi = round(c.s4l.vat_xi * pixels_ratio, 3)
  c.s4l.exemplar_embed_dim = 128  # Ours.

  return c
