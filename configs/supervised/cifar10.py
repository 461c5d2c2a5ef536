"""Supervised baseline on CIFAR-10: ResNet-18 (CIFAR stem) on the labelled images only.

python -m semi_ssl.main --config=configs/supervised/cifar10.py --workdir=/tmp/sup_cifar10 \
    [--config.labels_per_class=4|25|400]

The lower bound for configs/suave/cifar10.py: same backbone, labelled subset (same seed, same
images) and labelled batch. Optimiser: the standard CIFAR ResNet recipe of
github.com/kuangliu/pytorch-cifar (`main.py`: SGD, lr 0.1, momentum 0.9, weight decay 5e-4,
cosine to 0 over 200 epochs, plain cross-entropy). Views: the labelled-image augmentation of
Suave's official code (github.com/pietroastolfi/suave-daino, `suave/main_suave.py`, `tr_lab`).
"""

import ml_collections

from semi_ssl import config_base


def get_config() -> ml_collections.ConfigDict:
  c = config_base.get_base_config()
  c.method = 'supervised'
  c.dataset = 'cifar10'
  c.labels_per_class = 25  # The FixMatch benchmarks: 4, 25 or 400 per class.

  c.labelled_batch_size = 128  # As configs/suave/cifar10.py.
  c.batch_size = 256  # Unused: the supervised method reads no unlabelled images.
  # pytorch-cifar main.py's 200 epochs of the full train split (50,000 // 128 = 390 steps each)
  # at this batch size: 78k updates, whatever the size of the labelled subset.
  c.num_steps = 78_000
  c.log_every = 100
  c.eval_every = 10_000
  c.checkpoint_every = 2_000

  # As configs/suave/cifar10.py (solo-learn's CIFAR ResNet-18: 3x3/1 stem, no max-pool).
  c.model.backbone = 'resnet18'
  c.model.stem = 'cifar'
  c.model.dtype = 'bfloat16'

  # main_suave.py tr_lab (lines 298-305): RandomResizedCrop (scale 0.08-1, torchvision's
  # bilinear default), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale p=0.2; one
  # view, here of 32 pixels.
  c.augment.family = 'torchvision_bilinear'
  c.augment.num_global_crops = 1
  c.augment.global_size = 32
  c.augment.global_scale = (0.08, 1.0)
  c.augment.num_local_crops = 0
  c.augment.flip = True
  c.augment.color_jitter = (0.4, 0.4, 0.4, 0.1)
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (0.0,)
  c.augment.solarize_prob = (0.0,)

  # pytorch-cifar main.py: SGD(lr=0.1, momentum=0.9, weight_decay=5e-4), CosineAnnealingLR
  # to 0, no warm-up.
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.warmup_steps = 0
  c.optimizer.end_learning_rate_factor = 0.0
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4

  c.eval.batch_size = 1024  # Divisible by any power-of-two device count.
  c.supervised = ml_collections.ConfigDict(dict(label_smoothing=0.0))  # nn.CrossEntropyLoss().
  return c
