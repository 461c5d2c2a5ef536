"""Supervised baseline on ImageNet with 10% of the labels: ResNet-50 on the labelled images only.

python -m semi_ssl.main --config=configs/supervised/imagenet_10pct.py \
    --workdir=/tmp/sup_imagenet_10pct [--config.data_dir=DIR]

The labelled subset is SimCLR's 10% (TFDS imagenet2012_subset/10pct, 128k images). Optimiser and
length: S4L's supervised 10% baseline (github.com/google-research/s4l,
`config/supervised_imagenet_10p.sh`: batch 256, lr 0.1, weight decay 1e-3, 5 warm-up epochs,
200 epochs = 100k steps; SGD with momentum 0.9 in `trainer.py`), with a cosine instead of its
steps at epochs 140/160/180. Views: the labelled-image augmentation of Suave's official code
(github.com/pietroastolfi/suave-daino, `suave/main_suave.py`, `tr_lab`).
"""

import ml_collections

from semi_ssl import config_base


def get_config() -> ml_collections.ConfigDict:
  c = config_base.get_base_config()
  c.method = 'supervised'
  c.dataset = 'imagenet2012'
  c.label_fraction = 0.1
  c.decode_size = 256  # Shorter side resized to 256, centre square kept; crops come from it.

  c.labelled_batch_size = 256
  c.batch_size = 256  # Unused: the supervised method reads no unlabelled images.
  # Epochs of the labelled subset: 200 x (128,116 // 256) = 100k steps (supervised_imagenet_10p.sh:
  # "Total steps are 100k here").
  c.num_steps = None
  c.num_epochs = 200.0
  c.epoch_stream = 'labelled'
  c.log_every = 100
  c.eval_every = 10_000  # About 20 epochs at batch 256.
  c.checkpoint_every = 2500  # About 5 epochs.

  # s4l: --architecture resnet50v2 --filters_factor 4 (standard width); here ResNet-50 v1.5.
  c.model.backbone = 'resnet50'
  c.model.stem = 'imagenet'
  c.model.dtype = 'bfloat16'

  # main_suave.py tr_lab (lines 298-305): RandomResizedCrop(224) (scale 0.08-1, torchvision's
  # bilinear default), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale p=0.2; one
  # view. (S4L: inception crop and flip.)
  c.augment.family = 'torchvision_bilinear'
  c.augment.num_global_crops = 1
  c.augment.global_size = 224
  c.augment.global_scale = (0.08, 1.0)
  c.augment.num_local_crops = 0
  c.augment.flip = True
  c.augment.color_jitter = (0.4, 0.4, 0.4, 0.1)
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (0.0,)
  c.augment.solarize_prob = (0.0,)

  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1  # At S4L's batch 256; linear in the labelled batch (ours).
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.warmup_steps = None
  c.optimizer.warmup_epochs = 5.0  # --schedule '5,140,160,180,200'.
  c.optimizer.end_learning_rate_factor = 0.0
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-3

  c.eval.batch_size = 512
  c.eval.crop_fraction = 0.875  # Resize 256, centre crop 224.
  c.supervised = ml_collections.ConfigDict(dict(label_smoothing=0.0))
  return c
