"""Suave on ImageNet with 10% of the labels: ResNet-50 from SwAV, Suave, then a short fine-tune.

python -m semi_ssl.main --config=configs/suave/imagenet_10pct.py --workdir=/tmp/suave_in10 \
    --config.init_from.workdir=/path/to/swav_workdir --config.init_from.paths="('backbone',)" \
    [--config.data_dir=DIR]

Two stages, each in WORKDIR/<stage name>:
  suave     100 epochs of Suave: the top-level keys of this config. With the two init_from flags
            above, the backbone starts from the latest checkpoint of a self-supervised SwAV
            ResNet-50 (in this code's checkpoint layout); its projector and prototypes start
            fresh. Without them the whole model starts from scratch: a run the paper does not
            report.
  finetune  `config.finetune`: the first stage but for what `derived_stage` below changes (5
            epochs from the first stage's backbone and projector, fresh prototypes, two 224-pixel
            crops, no colour augmentation, a smaller learning rate, no warm-up).

Overrides of top-level keys (--config.seed, --config.batch_size, --config.model.dtype, ...) reach
both stages: the fine-tune reads every key it does not change by reference. Its own values are
overridden under `config.finetune` (--config.finetune.num_epochs=3, ...). Lengths are epochs of
the unlabelled images and the learning rates scale linearly with `batch_size`: they are turned
into steps and rates when a stage starts (`config_base.resolve`).

Sources: the official code, github.com/pietroastolfi/suave-daino. Stage 1:
`suave/scripts/train_10perc.sh`; stage 2: `suave/scripts/finetune_10perc.sh`; anything they
leave out: the defaults of `suave/main_suave.py` and the augmentation of
`src/multicropdataset.py` (unlabelled images) and of main_suave.py's labelled loader;
batch: the README's 8-GPU command (8 x 32 unlabelled + 8 x 16 labelled images per step).
Differences from that code: the mixed unlabelled views count one crop per image in the loss
weights (main_suave.py counts one per mixed view and GPU: `mixed_unlab_output.size(0)`, so
1 / 353 of its loss), and LARS leaves biases and norms out.
"""

import ml_collections
from ml_collections import config_dict

from semi_ssl import config_base


def get_config() -> ml_collections.ConfigDict:
  c = config_base.get_base_config()
  c.method = 'suave'
  c.dataset = 'imagenet2012'
  c.label_fraction = 0.1  # --labels_perc 10: SimCLR's subset (TFDS imagenet2012_subset/10pct).
  c.decode_size = 256  # Shorter side resized to 256, centre square kept; crops come from it.

  c.batch_size = 256  # README: 8 GPUs x --batch_size 32.
  c.labelled_batch_size = 128  # README: 8 GPUs x --lab_batch_size 16.
  c.num_steps = None
  c.num_epochs = 100.0  # --epochs 100, of the unlabelled images (all of ImageNet train).
  c.epoch_stream = 'unlabelled'
  c.log_every = 100
  c.eval_every = 50_000  # About 10 epochs at batch 256.
  c.checkpoint_every = 5000  # About 1 epoch.

  c.model.backbone = 'resnet50'  # main_suave.py: --arch resnet50.
  c.model.stem = 'imagenet'
  c.model.dtype = 'bfloat16'  # --use_fp16 true.

  # train_10perc.sh: --nmb_crops 2 8 --size_crops 224 96 --min_scale_crops 0.14 0.05
  # --max_scale_crops 1. 0.14. multicropdataset.py, every crop: flip, colour jitter
  # (0.8, 0.8, 0.8, 0.2) with p=0.8 (lines 89-92, SimCLR strength 1), grayscale p=0.2, blur
  # p=0.5; torchvision's RandomResizedCrop with its bilinear default (lines 41-44).
  c.augment.family = 'torchvision_bilinear'
  c.augment.num_global_crops = 2
  c.augment.global_size = 224
  c.augment.global_scale = (0.14, 1.0)
  c.augment.num_local_crops = 8
  c.augment.local_size = 96
  c.augment.local_scale = (0.05, 0.14)
  c.augment.flip = True
  c.augment.color_jitter = (0.8, 0.8, 0.8, 0.2)
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (0.5,)
  c.augment.local_blur_prob = 0.5
  c.augment.solarize_prob = (0.0,)
  # Labelled images (github.com/pietroastolfi/suave-daino at 9adf13d, suave/main_suave.py
  # lines 298-305, `tr_lab`): one RandomResizedCrop(224) of (0.08, 1) of the area, flip, colour
  # jitter (0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale p=0.2, no blur; torchvision, bilinear.
  c.augment.labelled = config_base.single_labelled_crop(
    c.augment,
    family='torchvision_bilinear',
    color_jitter=(0.4, 0.4, 0.4, 0.1),
    grayscale_prob=0.2,
  )

  # train_10perc.sh: --base_lr 0.4 --final_lr 0.001 --warmup_epochs 5 (from 0); main_suave.py:
  # LARS(momentum=0.9, eta=0.001), --wd 1e-6. Its 0.4 is for 256 unlabelled images a step; the
  # linear scaling to other batch sizes is ours.
  c.optimizer.name = 'lars'
  c.optimizer.learning_rate = 0.4
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.end_learning_rate_factor = 0.001 / 0.4
  c.optimizer.warmup_steps = None
  c.optimizer.warmup_epochs = 5.0
  c.optimizer.momentum = 0.9
  c.optimizer.trust_coefficient = 0.001
  c.optimizer.weight_decay = 1e-6

  c.eval.batch_size = 512
  c.eval.crop_fraction = 0.875  # Resize 256, centre crop 224.

  c.suave = ml_collections.ConfigDict(
    dict(
      # main_suave.py: --hidden_mlp 2048 --feat_dim 128 (SwAV's 2-layer projection head);
      # --nmb_prototypes 1000: one prototype per class.
      projector_hidden_dim=2048,
      embed_dim=128,
      projector_layers=2,
      num_prototypes=0,
      # main_suave.py: --temperature 0.1 --label_smoothing 0.01 --sinkhorn_iterations 3;
      # train_10perc.sh: --epsilon 0.05 --queue_length 3840 --epoch_queue_starts 0.
      temperature=0.1,
      label_smoothing=0.01,
      sinkhorn_epsilon=0.05,
      sinkhorn_iters=3,
      # Entries per global crop, as --queue_length: main_suave.py keeps queue[i] of
      # queue_length / 8 GPUs for each of the 2 global crops, i.e. 3840 per crop over the
      # batch of 256 (SwAV's value for batch 256). Filled from the first step (epoch 0), it
      # joins the Sinkhorn problem once full, after 15 steps (main_suave.py: once its last
      # row is non-zero). The fine-tune keeps it (finetune_10perc.sh: the same flags).
      queue_size=3840,
      # train_10perc.sh: --freeze_prototypes_niters 0 --warmup_proj_nepochs 0
      # --use_momentum false.
      freeze_prototypes_steps=0,
      heads_only_steps=0,
      ema_momentum=0.0,
      # With --use_momentum (off above), the momentum rises from --momentum_encoder to 1 on a
      # cosine over the run (main_suave.py at 9adf13d, lines 124-128 and 453).
      ema_momentum_schedule='cosine',
      # Unit-norm prototypes, renormalised before every step (main_suave.py lines 571-575, as
      # SwAV's main_swav.py lines 277-281); here at the start and after every update.
      normalize_prototypes=True,
      # train_10perc.sh: --mixup_lab true (--mixup_lab_type default 'extend'), --mixup_unlab
      # true --mixup_unlab_type globals. main_suave.py lines 252-264 and 325-337: mixup_alpha=1.,
      # cutmix_alpha=1., switch_prob=0.5, mode='batch', correct_lam=True, prob 1 in 'extend'
      # mode: the labelled batch is extended with its mixes, and global views 0 and 1 are
      # mixed into a third term (src/mixup.py).
      mixup_alpha=1.0,
      cutmix_alpha=1.0,
      mixup_mode='extend',
      mixup_unlabelled=True,
      # main_suave.py lines 687-696: each term weighs its share of the crops (labelled images
      # with their mixes, 2 + 8 crops per unlabelled image, the mixed views), so the labelled
      # term is 256 / (2560 + 256 + 256) of the loss here, not 128 / 384.
      loss_weighting='crops',
    )
  )

  # main_suave.py loads --swav_init_ckpt without its prototypes and, with --init_proj false
  # (train_10perc.sh), without its projection head: init_from.paths=('backbone',) (the command
  # in the docstring); left empty, from scratch.

  # Stage 2, finetune_10perc.sh: the first stage but for what it changes.
  c.finetune = config_base.derived_stage(
    c,
    'finetune',
    num_epochs=5.0,  # --epochs 5.
    # --base_lr 0.03 --final_lr 0.0003 --warmup_epochs 0.
    optimizer=dict(learning_rate=0.03, end_learning_rate_factor=0.0003 / 0.03, warmup_epochs=0.0),
    # --nmb_crops 2 --size_crops 224 --min_scale_crops 0.08 --max_scale_crops 1.0
    # --color_jit_unlab false (no colour jitter, grayscale or blur). Labelled images:
    # --light_augment_lab true (main_suave.py lines 315-322): one RandomResizedCrop(224),
    # flip, colour jitter (0.1, 0.1, 0.1, 0.1) with p=0.8, no grayscale.
    augment=dict(
      global_scale=(0.08, 1.0),
      num_local_crops=0,
      color_jitter=(0.0, 0.0, 0.0, 0.0),
      grayscale_prob=0.0,
      blur_prob=(0.0,),
      local_blur_prob=0.0,
      labelled=dict(color_jitter=(0.1,) * 4, grayscale_prob=0.0),
    ),
    suave=dict(label_smoothing=0.001),  # --label_smoothing 0.001.
    # --init_proj true, from the first stage's checkpoint; main_suave.py drops the
    # checkpoint's prototypes in every case.
    init_from=ml_collections.ConfigDict(
      dict(workdir=config_dict.placeholder(str), stage='suave', paths=('backbone', 'projector'))
    ),
  )
  c.stages = (config_base.derived_stage(c, 'suave', skip=('finetune',)), c.finetune)
  return c
