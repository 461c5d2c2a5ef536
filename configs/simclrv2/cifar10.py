"""SimCLRv2 on CIFAR-10, 25 labels per class by default: pretrain -> finetune -> distill.

python -m semi_ssl.main --config=configs/simclrv2/cifar10.py --workdir=DIR \
    [--config.labels_per_class=4|25|400] [--config.model.width=2]

configs/simclrv2/imagenet_10pct.py (stages, overrides and sources are described there) but for
the values changed below. Sources: [R] github.com/google-research/simclr at 383d414, README.md
lines 79-84 (the CIFAR-10 pretraining command); [F] tf2/run.py flag defaults; tf2/resnet.py
(CIFAR stem) and tf2/data.py. The SimCLR paper's appendix B.9 (CIFAR-10 with a ResNet-50)
could not be read here: none of its values is used. The fine-tune and distill lengths and
batches are ours (neither paper gives a semi-supervised CIFAR recipe); their optimisers are the
ImageNet stages'.
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  imagenet_10pct = runpy.run_path(os.path.join(os.path.dirname(__file__), 'imagenet_10pct.py'))
  c = imagenet_10pct['get_config']()  # Its stages read the values changed below by reference.
  c.dataset = 'cifar10'
  c.label_fraction = None
  c.labels_per_class = 25  # The FixMatch benchmarks: 4, 25 or 400 per class.

  c.batch_size = 512  # [R] line 80 --train_batch_size=512.
  c.labelled_batch_size = 64  # Ours.
  c.num_epochs = 1000.0  # [R] line 80 --train_epochs=1000.
  c.eval_every = 10_000  # Ours: about 100 epochs at batch 512.
  c.checkpoint_every = 1000  # Ours: about 10 epochs.

  # [R] line 82 --resnet_depth=18 (width 1; --model.width=2 widens it); tf2/resnet.py lines
  # 551-564: the CIFAR stem, a 3x3 stride-1 convolution and no max-pool.
  c.model.backbone = 'resnet18'
  c.model.stem = 'cifar'

  # [R] lines 82-83 --image_size=32 --use_blur=False --color_jitter_strength=0.5: jitter
  # (0.8, 0.8, 0.8, 0.2) x 0.5; crops, flip and grayscale as on ImageNet.
  c.augment.global_size = 32
  c.augment.color_jitter = (0.4, 0.4, 0.4, 0.1)
  c.augment.blur_prob = (0.0,)

  # [R] line 81 --learning_rate=1.0 --weight_decay=1e-4, with [F]'s learning_rate_scaling
  # 'linear' (x batch / 256) and warmup_epochs 10; LARS ([F] optimizer 'lars').
  c.optimizer.learning_rate = 1.0
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.weight_decay = 1e-4

  c.eval.crop_fraction = 1.0  # tf2/data.py lines 103-105: no test crop at 32 pixels.
  c.simclrv2.temperature = 0.5  # [R] line 81 --temperature=0.5.

  # Ours: 1000 steps of 256 labelled images, the ImageNet fine-tune's optimiser.
  c.finetune.labelled_batch_size = 256
  c.finetune.optimizer.lr_scaling = 'sqrt'  # As ImageNet's: 0.005 x sqrt(256).
  c.finetune.num_epochs = None
  c.finetune.num_steps = 1000
  c.finetune.eval_every = 250
  c.finetune.checkpoint_every = 250
  # Ours: half the pretraining's epochs (the paper's ImageNet ratio, 400 / 800), its optimiser.
  c.distill.num_epochs = 500.0
  c.distill.optimizer.warmup_epochs = 10.0
  return c
