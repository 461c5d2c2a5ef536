"""Supervised baseline on ImageNet with 1% of the labels: ResNet-50 on the labelled images only.

python -m semi_ssl.main --config=configs/supervised/imagenet_1pct.py \
    --workdir=/tmp/sup_imagenet_1pct [--config.data_dir=DIR]

configs/supervised/imagenet_10pct.py on SimCLR's 1% subset (TFDS imagenet2012_subset/1pct,
12.8k images) with S4L's supervised 1% settings (github.com/google-research/s4l,
`config/supervised_imagenet_1p.sh`: batch 256, lr 0.01, weight decay 1e-2, 5 warm-up epochs,
1000 epochs), again with a cosine instead of its steps at epochs 700/800/900.
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  imagenet_10pct = runpy.run_path(os.path.join(os.path.dirname(__file__), 'imagenet_10pct.py'))
  c = imagenet_10pct['get_config']()
  c.label_fraction = 0.01
  c.num_epochs = 1000.0  # Of the 12,811 labelled images: 50 steps each at batch 256.
  c.eval_every = 10_000  # About 200 epochs.
  c.checkpoint_every = 2500  # About 50 epochs.
  c.optimizer.learning_rate = 0.01
  c.optimizer.warmup_epochs = 5.0  # --schedule '5,700,800,900,1000'.
  c.optimizer.weight_decay = 1e-2
  return c
