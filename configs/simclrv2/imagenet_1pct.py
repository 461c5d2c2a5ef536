"""SimCLRv2 on ImageNet with 1% of the labels: pretrain -> finetune -> distill, ResNet-50 1x.

python -m semi_ssl.main --config=configs/simclrv2/imagenet_1pct.py --workdir=DIR \
    [--config.data_dir=TFDS_DIR] [--config.model.width=2] \
    [--config.finished_workdir=IN10_DIR/pretrain]

configs/simclrv2/imagenet_10pct.py (stages, overrides, width 2 and sources [R], [P] are
described there) on SimCLR's 1% subset (TFDS imagenet2012_subset/1pct). The pretrain stage is
the same: `--config.finished_workdir` reads a finished one of the 10% config instead of
training it again. The fine-tune is [R] README.md lines 157-166 as written for 1%: 60 epochs.
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  imagenet_10pct = runpy.run_path(os.path.join(os.path.dirname(__file__), 'imagenet_10pct.py'))
  c = imagenet_10pct['get_config']()  # Its stages read the values changed below by reference.
  c.label_fraction = 0.01  # [R] line 163 --dataset=imagenet2012_subset/1pct.
  c.finetune.num_epochs = 60.0  # [R] line 162 --train_epochs=60; [P] 60 epochs with 1%.
  c.finetune.eval_every = 100  # Ours: about 8 epochs of the 1% subset at batch 1024.
  c.finetune.checkpoint_every = 25  # Ours: about 2 epochs.
  return c
