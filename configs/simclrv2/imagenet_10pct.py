"""SimCLRv2 on ImageNet with 10% of the labels: pretrain -> finetune -> distill, ResNet-50 1x.

python -m semi_ssl.main --config=configs/simclrv2/imagenet_10pct.py --workdir=DIR \
    [--config.data_dir=TFDS_DIR] [--config.model.width=2]

Each stage runs in DIR/<stage name> (see configs/simclrv2/digits.py and methods/simclrv2.py):
  pretrain  800 epochs of NT-Xent on all of ImageNet train (labels unused): the top-level keys.
  finetune  `config.finetune`: the backbone and the first projection layer from pretrain, a
            fresh linear classifier, 30 epochs of the 10% subset.
  distill   `config.distill`: a student of `config.model` from scratch, 400 epochs on the
            unlabelled images towards the frozen fine-tuned network's softmax at T = 1.
`--config.model.width=2` gives ResNet-50 2x (models/resnet.py multiplies every stage's width;
the projection head's hidden width follows the backbone's 2048 x width features, as tf2/model.py
does); it reaches every stage and the teacher. Selective kernels are not implemented.
One pretraining serves both label fractions: with `--config.finished_workdir=OTHER/pretrain`
(a finished pretrain stage of imagenet_1pct.py or of this config) the pretrain stage is read
from there, not trained; the later stages run here.

Sources (github.com/google-research/simclr at 383d414):
  [R] README.md: the ImageNet pretraining command (lines 101-106) and the command that
      fine-tunes the whole network on 1% of the labels from the middle projection layer
      (lines 157-166).
  [F] tf2/run.py flag defaults; [M] tf2/model.py (LARS exclusions lines 36-42, warm-up then
      cosine to 0 lines 84-110); [L] tf2/lars_optimizer.py; [D] tf2/data_util.py and
      tf2/data.py (augmentation).
  [K] tf2/colabs/distillation_self_training.ipynb, the official distillation example (a small
      student on tf_flowers, not the ImageNet recipe): line 892 temperature = 1.; line 913 the
      loss, the KD term alone (no label term), whose lines 803-807 are T^2 x the cross-entropy
      to the teacher's softmax at T; lines 889-906 LARS, momentum 0.9, weight decay 1e-4
      (biases and BatchNorm excluded), cosine decay; line 861 its views: a random crop and
      flip, no colour distortion.
  [P] the paper (Chen et al., NeurIPS 2020, arXiv 2006.10029), section 4 "Settings": only part
      of its text could be read here (batch 4096, global BatchNorm, 800 epochs of pretraining;
      fine-tuning for 60 epochs on 1% and 30 on 10% of the labels). Its appendix could not be
      read (the search tool's copies of the paper give its first pages only), so the values
      marked [P, unread] are quoted from memory of the paper, not checked against its text:
      pretraining lr 6.4 = 0.1 x sqrt(4096), linear warm-up over the first 5% of the epochs;
      the 10% fine-tune with the 1% command's optimiser; distillation for 400 epochs with the
      pretraining's learning-rate schedule and batch; a memory of 64K negatives.
Values marked "ours" are from none of these.
"""

import ml_collections

from semi_ssl import config_base


def get_config() -> ml_collections.ConfigDict:
  c = config_base.get_base_config()
  c.method = 'simclrv2'
  c.dataset = 'imagenet2012'
  c.label_fraction = 0.1  # SimCLR's 10% subset ([R] line 150: imagenet2012_subset/10pct).
  c.decode_size = 256  # Ours: shorter side 256, centre square kept; crops come from it.

  c.batch_size = 4096  # [R] line 102 --train_batch_size=4096; [P] 4096.
  # Ours: labelled images join the contrastive batch (their labels unused).
  c.labelled_batch_size = 128
  c.num_steps = None
  c.num_epochs = 800.0  # [P] 800 epochs ([R] line 102's 100 epochs are SimCLR v1's default).
  c.epoch_stream = 'unlabelled'
  c.log_every = 100
  c.eval_every = 3000  # Ours: about 10 epochs at batch 4096.
  c.checkpoint_every = 300  # Ours: about 1 epoch ([F] checkpoint_epochs 1).

  c.model.backbone = 'resnet50'  # [F] resnet_depth 50, width_multiplier 1 (2: --model.width=2).
  c.model.stem = 'imagenet'
  c.model.dtype = 'bfloat16'  # Ours (TPU training, as the paper's).

  # [D] data_util.py: crop_and_resize (lines 298-320): one crop of (0.08, 1) of the area, ratio
  # (3/4, 4/3), bicubic tf.image.resize; flip (line 469); colour jitter of strength 1 ([F]
  # color_jitter_strength 1.0): (0.8, 0.8, 0.8, 0.2) x strength (lines 66-69) with p=0.8, then
  # grayscale p=0.2 (lines 388-389); blur p=0.5 on each view ([F] use_blur True; sigma in
  # (0.1, 2.0), line 407). Family 'simclr': these TF ops (contrast per channel, HSV
  # saturation, multiplicative brightness, lines 33-43, bicubic without antialiasing); its crop
  # sampler differs slightly (semi_ssl/data/augment.py, above FAMILIES).
  c.augment.family = 'simclr'
  c.augment.num_global_crops = 2
  c.augment.global_size = 224  # [R] line 104 --image_size=224.
  c.augment.global_scale = (0.08, 1.0)
  c.augment.num_local_crops = 0
  c.augment.flip = True
  c.augment.color_jitter = (0.8, 0.8, 0.8, 0.2)
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (0.5,)
  c.augment.solarize_prob = (0.0,)

  # [R] lines 102-103: LARS ([F] optimizer 'lars'), --learning_rate_scaling=sqrt
  # --weight_decay=1e-4; [P, unread] lr 0.1 x sqrt(batch) for SimCLRv2's 800 epochs ([R]
  # line 103's 0.075 is the 100-epoch v1 command), warm-up over 5% of the epochs ([F]
  # warmup_epochs defaults to 10), then [M] cosine to 0. [F] momentum 0.9; [L] eeta 0.001
  # (EETA_DEFAULT, line 22); [M] lines 36-42: biases and BatchNorm excluded from weight decay.
  c.optimizer.name = 'lars'
  c.optimizer.learning_rate = 0.1
  c.optimizer.lr_scaling = 'sqrt'
  c.optimizer.warmup_steps = None
  c.optimizer.warmup_epochs = 0.05 * 800
  c.optimizer.end_learning_rate_factor = 0.0
  c.optimizer.momentum = 0.9
  c.optimizer.trust_coefficient = 0.001
  c.optimizer.weight_decay = 1e-4

  c.eval.batch_size = 1024
  c.eval.crop_fraction = 0.875  # [D] CROP_PROPORTION = 0.875 (line 22).

  c.simclrv2 = ml_collections.ConfigDict(
    dict(
      stage='pretrain',
      temperature=0.1,  # [R] line 102 --temperature=0.1; [F] temperature 0.1.
      embed_dim=128,  # [F] proj_out_dim 128.
      projector_layers=3,  # [F] num_proj_layers 3; [R] line 166.
      finetune_layers=1,  # [R] line 166 --ft_proj_selector=1: the head's middle layer.
      distill_temperature=1.0,  # [K] line 892 temperature = 1.; [P, unread] T = 1 on ImageNet.
      label_weight=0.0,  # [K] line 913: the distillation loss alone.
      # Off by default: the official code has no memory (no queue or momentum encoder in
      # tf2/). The paper (section 2) adds MoCo's memory network, a moving average of the
      # weights, whose outputs are buffered as negatives: about +1% (read in a summary,
      # larry-11.github.io/2020/07/24/simclr-v2; the paper's text was not readable here).
      # [P, unread]: a memory of 64K; --config.simclrv2.memory_size=65536. The momentum is
      # MoCo's (github.com/facebookresearch/moco at 4397a04, main_moco.py lines 159-166:
      # --moco-k 65536, --moco-m 0.999).
      memory_size=0,
      memory_momentum=0.999,
      teacher=config_base.frozen_teacher(c.model),
    )
  )

  # [D] data.py line 108: no colour jitter when not pretraining; model.py (run.py lines 243,
  # 255): one view, no blur. [K] line 861 (distillation): random crop and flip only.
  crop_and_flip = dict(
    num_global_crops=1,
    color_jitter=(0.0, 0.0, 0.0, 0.0),
    grayscale_prob=0.0,
    blur_prob=(0.0,),
    labelled=None,  # The same views for labelled images (derived_stage cannot follow a None).
  )
  return config_base.simclrv2_stages(
    c,
    finetune=dict(
      labelled_batch_size=1024,  # [R] line 162 --train_batch_size=1024.
      num_epochs=30.0,  # [P] 30 epochs with 10% of the labels.
      epoch_stream='labelled',
      eval_every=500,  # Ours: 4 epochs of the 10% subset at batch 1024.
      checkpoint_every=125,  # Ours: about 1 epoch.
      # [R] lines 160-162: --optimizer=lars --learning_rate=0.005 --learning_rate_scaling=sqrt
      # --weight_decay=0 --warmup_epochs=0 (the 1% command; [P, unread] the same for 10%).
      optimizer=dict(learning_rate=0.005, weight_decay=0.0, warmup_epochs=0.0),
      augment=crop_and_flip,
    ),
    # [K] lines 889-906: LARS with weight decay 1e-4 and a cosine decay, as pretraining;
    # [P, unread]: the pretraining's batch and learning-rate schedule, 400 epochs.
    distill=dict(num_epochs=400.0, optimizer=dict(warmup_epochs=0.05 * 400), augment=crop_and_flip),
  )
