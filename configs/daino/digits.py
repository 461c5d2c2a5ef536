"""Daino on the embedded digits data, 5 labels per class (50 labelled images).

python -m semi_ssl.main --config=configs/daino/digits.py --workdir=/tmp/daino_digits

Test top-1 and wall times: the README's digits table. Tuned here: a faster teacher (momentum
0.95: the run is short) and mixup of the labelled images (+3 points); a softer teacher
(temperature 0.1) lost 6 points.

With `:official` (`--config=configs/daino/digits.py:official`) the official recipe's options of
configs/daino/imagenet_10pct.py (which cites them) at digits' scale: torchvision's bicubic
crops, one labelled view of its own (torchvision's bilinear crop at the global crops' size and
scale, not flipped), DINOHead (3 GELU layers, prototypes' norms learnt), the labelled batch
extended with mixup or CutMix mixes, each term weighed by its share of the crops, the teacher
temperature changed once an epoch. The README's digits table gives both.
"""

from ml_collections import config_dict

from semi_ssl import config_base, errors


def get_config(arg: str = ''):
  errors.require(arg in ('', 'official'), f"unknown argument ':{arg}': use ':official' or none.")
  c = config_base.get_base_config()
  c.method = 'daino'
  c.dataset = 'digits'
  c.labels_per_class = 5
  c.batch_size = 128
  c.labelled_batch_size = 32
  c.num_steps = 1000
  c.log_every = 100
  c.eval_every = 500
  c.checkpoint_every = 250
  c.augment.num_global_crops = 2
  c.augment.global_scale = (0.5, 1.0)
  c.augment.num_local_crops = 2
  c.augment.local_size = 6
  c.augment.local_scale = (0.3, 0.6)
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 5e-4
  c.daino = config_dict.ConfigDict(
    dict(
      projector_hidden_dim=256,
      embed_dim=64,
      projector_layers=2,
      head='swav',  # 'dino': DINOHead's GELU layers without BatchNorm.
      norm_last_layer=True,  # False: each prototype's norm is learnt (DINOHead).
      normalize_prototypes=False,  # True: unit-norm prototypes at every step (SwAV, Suave).
      num_prototypes=0,  # 0: one prototype per class
      student_temperature=0.1,
      label_smoothing=0.01,
      teacher_temperature=0.05,
      teacher_temperature_warmup_start=0.05,
      teacher_temperature_warmup_steps=0,
      teacher_temperature_warmup_epochs=config_dict.placeholder(float),  # Instead of steps.
      teacher_temperature_update_steps=0,  # N: the temperature changes once every N steps.
      teacher_temperature_update_epochs=config_dict.placeholder(float),  # Instead of steps.
      teacher_momentum=0.95,  # cosine schedule to 1.0 over num_steps
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
  if arg == 'official':
    c.augment.family = 'torchvision_bicubic'
    c.augment.labelled = config_base.single_labelled_crop(
      c.augment,
      family='torchvision_bilinear',
      color_jitter=(0.0, 0.0, 0.0, 0.0),
      grayscale_prob=0.0,
      scale=c.augment.global_scale,
      flip=False,
    )
    c.daino.update(
      head='dino',
      projector_layers=3,
      norm_last_layer=False,
      cutmix_alpha=1.0,
      mixup_mode='extend',
      loss_weighting='crops',
      teacher_temperature_update_steps=None,
      teacher_temperature_update_epochs=1.0,
    )
  return c
