"""Daino on CIFAR-10 with a ResNet-18, 25 labels per class by default (4 / 25 / 400 used).

python -m semi_ssl.main --config=configs/daino/cifar10.py --workdir=/tmp/daino_cifar10 \
    --config.labels_per_class=4

The public code of the paper (github.com/pietroastolfi/suave-daino) has no CIFAR recipe for
Daino: the Daino values below follow its ImageNet script (daino/scripts/train_10perc.sh:
temperatures, centring, label smoothing, labelled mixup); the schedule, crops and optimiser
are our choices for 32x32 images, not the paper's.
"""

from ml_collections import config_dict

from semi_ssl import config_base


def get_config():
  c = config_base.get_base_config()
  c.method = 'daino'
  c.dataset = 'cifar10'
  c.labels_per_class = 25
  c.batch_size = 256
  c.labelled_batch_size = 64
  c.num_steps = 100_000  # ~512 passes over the 50k unlabelled images (our choice).
  c.log_every = 200
  c.eval_every = 5000
  c.checkpoint_every = 5000
  c.model.backbone = 'resnet18'
  c.model.stem = 'cifar'
  # Two global 32-pixel crops and four local 16-pixel crops (our choice of sizes and scales).
  c.augment.family = 'torchvision_bicubic'  # DINO's ops (main_dino.py lines 421-452).
  c.augment.num_global_crops = 2
  c.augment.global_size = 32
  c.augment.global_scale = (0.3, 1.0)
  c.augment.num_local_crops = 4
  c.augment.local_size = 16
  c.augment.local_scale = (0.1, 0.3)
  c.augment.flip = True
  c.augment.color_jitter = (0.4, 0.4, 0.2, 0.1)  # DINO's, main_dino.py line 424.
  c.augment.grayscale_prob = 0.2
  c.augment.solarize_prob = (0.0, 0.2)
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.warmup_steps = 2000
  c.optimizer.weight_decay = 5e-4
  c.daino = config_dict.ConfigDict(
    dict(
      projector_hidden_dim=2048,
      embed_dim=256,
      projector_layers=3,  # DINOHead's sizes, but SwAV's BatchNorm + ReLU layers (ours).
      head='swav',  # 'dino': DINOHead's GELU layers without BatchNorm.
      norm_last_layer=True,  # False: each prototype's norm is learnt (DINOHead).
      normalize_prototypes=False,  # True: unit-norm prototypes at every step (SwAV, Suave).
      num_prototypes=0,  # 0: one prototype per class.
      student_temperature=0.1,
      label_smoothing=0.01,
      teacher_temperature=0.07,
      teacher_temperature_warmup_start=0.04,
      teacher_temperature_warmup_steps=16_000,  # The first 1/6 of training, as 10 of 60 epochs.
      teacher_temperature_warmup_epochs=config_dict.placeholder(float),  # Instead of steps.
      teacher_temperature_update_steps=0,  # Changes every step (DINO: once an epoch).
      teacher_temperature_update_epochs=config_dict.placeholder(float),  # Instead of steps.
      teacher_momentum=0.99,
      center_momentum=0.9,
      mixup_alpha=1.0,
      # Labelled mixing (views.mix_labelled): mixup only, the mixes replace the images; the
      # terms weighed by their share of the images. configs/daino/imagenet_10pct.py has the
      # official recipe's values.
      cutmix_alpha=0.0,
      mixup_mode='replace',
      loss_weighting='images',
    )
  )
  return c
