"""Suave on CIFAR-10 from scratch: ResNet-18 (CIFAR stem), 25 labels per class by default.

python -m semi_ssl.main --config=configs/suave/cifar10.py --workdir=/tmp/suave_cifar10 \
    [--config.labels_per_class=4|25|400]

Sources. Suave's loss hyperparameters (temperature, Sinkhorn, label smoothing, prototypes = the
classes, no EMA / mixup / frozen heads) are the defaults and ImageNet scripts of the official
code, github.com/pietroastolfi/suave-daino (`suave/main_suave.py`, `suave/scripts/
train_10perc.sh`). That repository has no CIFAR recipe, and the paper's text was not available
to me, so the architecture, optimiser, augmentation and length are those of SwAV on CIFAR in
solo-learn, the library of Suave's first author (github.com/vturrisi/solo-learn,
`scripts/pretrain/cifar/swav.sh`, `solo/methods/base.py`); they are not from the Suave paper.
"""

import ml_collections

from semi_ssl import config_base


def get_config() -> ml_collections.ConfigDict:
  c = config_base.get_base_config()
  c.method = 'suave'
  c.dataset = 'cifar10'
  c.labels_per_class = 25  # The FixMatch benchmarks: 4, 25 or 400 per class.

  c.batch_size = 256  # solo-learn swav.sh: --batch_size 256.
  c.labelled_batch_size = 128  # Suave's 2:1 unlabelled:labelled ratio (train_10perc.sh: 32 / 16).
  c.num_steps = None
  c.num_epochs = 1000.0  # solo-learn swav.sh: --max_epochs 1000 (here of the unlabelled images).
  c.epoch_stream = 'unlabelled'
  c.log_every = 100
  c.eval_every = 10_000  # About 50 epochs at batch 256.
  c.checkpoint_every = 2000  # About 10 epochs.

  # solo-learn base.py: torchvision ResNet-18 with a 3x3/1 stem conv and no max-pool on CIFAR.
  c.model.backbone = 'resnet18'
  c.model.stem = 'cifar'
  c.model.dtype = 'bfloat16'  # swav.sh: --precision 16.

  # solo-learn swav.sh: two 32-pixel crops, SimCLR colour jitter of strength 1 (0.8, 0.8, 0.8,
  # 0.2), no blur (--gaussian_prob 0.0 0.0), no local crops. The crop scale, flip and
  # grayscale are solo-learn's defaults (scripts/pretrain/cifar/augmentations/symmetric.yaml).
  # The ops are Suave's (torchvision, bilinear: suave-daino src/multicropdataset.py lines
  # 41-44 and 89-91); solo-learn resizes bicubic (solo/data/pretrain_dataloader.py line 224).
  c.augment.family = 'torchvision_bilinear'
  c.augment.num_global_crops = 2
  c.augment.global_size = 32
  c.augment.global_scale = (0.08, 1.0)
  c.augment.num_local_crops = 0
  c.augment.flip = True
  c.augment.color_jitter = (0.8, 0.8, 0.8, 0.2)
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (0.0,)
  c.augment.solarize_prob = (0.0,)

  # solo-learn swav.sh: LARS with eta 0.02, lr 0.6 -> 0.0006 (cosine after the 10 warm-up
  # epochs of base.py), weight decay 1e-6; biases and norms are excluded from LARS and decay
  # (pretrain/cifar/swav.yaml: exclude_bias_n_norm). solo-learn's --grad_clip_lars (clipping
  # the LARS rate at the learning rate) has no counterpart here. swav.sh's 0.6 is for batch 256;
  # the linear scaling to other batch sizes is ours.
  c.optimizer.name = 'lars'
  c.optimizer.learning_rate = 0.6
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.end_learning_rate_factor = 0.001
  c.optimizer.warmup_steps = None
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.weight_decay = 1e-6
  c.optimizer.trust_coefficient = 0.02

  c.eval.batch_size = 1024  # Divisible by any power-of-two device count.

  c.suave = ml_collections.ConfigDict(
    dict(
      # swav.sh: --proj_hidden_dim 2048 --proj_output_dim 128; SwAV's 2-layer projector.
      projector_hidden_dim=2048,
      embed_dim=128,
      projector_layers=2,
      num_prototypes=0,  # One prototype per class (main_suave.py: --nmb_prototypes 1000).
      # main_suave.py defaults: --temperature 0.1 --epsilon 0.05 --sinkhorn_iterations 3
      # --label_smoothing 0.01.
      temperature=0.1,
      label_smoothing=0.01,
      sinkhorn_epsilon=0.05,
      sinkhorn_iters=3,
      # Entries per global crop, as SwAV's queue_length: one queue of 3840 for each of the 2
      # global crops (swav.sh: --queue_size 3840 and solo-learn's queue [2, queue_size, D] at
      # batch 256, as train_10perc.sh's --queue_length 3840). Here it fills from the first step
      # and joins the Sinkhorn problem once full (after 15 steps); solo-learn starts it at
      # epoch 50 (--epoch_queue_starts 50).
      queue_size=3840,
      # train_10perc.sh: --freeze_prototypes_niters 0 --warmup_proj_nepochs 0
      # --use_momentum false. Its mixup is left out: no CIFAR source uses it.
      freeze_prototypes_steps=0,
      heads_only_steps=0,
      ema_momentum=0.0,
      ema_momentum_schedule='constant',  # 'cosine': from ema_momentum to 1 over num_steps.
      # True: unit-norm prototypes at every step, as SwAV and Suave (configs/suave/imagenet_*);
      # off here, as before the option existed.
      normalize_prototypes=False,
      mixup_alpha=0.0,
      # Labelled mixing (views.mix_labelled): mixup only, the mixes replace the images; the
      # terms weighed by their share of the images. configs/suave/imagenet_10pct.py has the
      # official recipe's values.
      cutmix_alpha=0.0,
      mixup_mode='replace',
      loss_weighting='images',
      mixup_unlabelled=False,
    )
  )
  return c
