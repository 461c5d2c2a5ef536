"""Suave on ImageNet with 1% of the labels: ResNet-50 from SwAV, Suave, then a short fine-tune.

python -m semi_ssl.main --config=configs/suave/imagenet_1pct.py --workdir=/tmp/suave_in1 \
    --config.init_from.workdir=/path/to/swav_workdir --config.init_from.paths="('backbone',)" \
    [--config.data_dir=DIR]

configs/suave/imagenet_10pct.py (stages, overrides and sources are described there) on SimCLR's
1% subset (TFDS imagenet2012_subset/1pct). The first stage is the same
(github.com/pietroastolfi/suave-daino, `suave/scripts/train_1perc.sh` differs from
train_10perc.sh only in --labels_perc); the fine-tune follows `suave/scripts/finetune_1perc.sh`,
except for its --lr_last_layer 0.01 (the prototypes' learning rate), which has no counterpart
here: they follow the schedule of the other parameters.
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  imagenet_10pct = runpy.run_path(os.path.join(os.path.dirname(__file__), 'imagenet_10pct.py'))
  c = imagenet_10pct['get_config']()  # Its stages read the values changed below by reference.
  c.label_fraction = 0.01  # --labels_perc 1.
  # finetune_1perc.sh: --epochs 3 --base_lr 0.02 --final_lr 0.0002 --label_smoothing 0.01.
  c.finetune.num_epochs = 3.0
  c.finetune.optimizer.learning_rate = 0.02
  c.finetune.optimizer.end_learning_rate_factor = 0.0002 / 0.02
  c.finetune.suave.label_smoothing = 0.01
  return c
