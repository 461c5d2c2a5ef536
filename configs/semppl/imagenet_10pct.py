"""SemPPL on ImageNet with 10% of the labels (the SimCLR subset), ResNet-50, from scratch.

python -m semi_ssl.main --config=configs/semppl/imagenet_10pct.py --workdir=DIR \
    --config.data_dir=TFDS_DIR

No value below is cited from the SemPPL paper's tables: of its text (ICLR 2023, arXiv
2301.05158) only the abstract and a few quoted lines could be read here, which give ResNet-50
and the 1% / 10% ImageNet splits of Chen et al. 2020a (SimCLR). Sources:
  [O] the official release (github.com/google-deepmind/semppl, formerly deepmind/semppl):
      linear-evaluation code only, built on BYOL's; no pretraining config. It gives the
      augmentations (utils/augmentations.py), crops (utils/dataset.py), head shape
      (utils/networks.py), LARS (utils/optimizers.py) and schedules (utils/schedules.py).
  [B] BYOL's ImageNet config (github.com/deepmind/deepmind-research, byol/configs/byol.py, the
      300-epoch presets), the code SemPPL's release (github.com/deepmind/semppl) builds on:
      networks, optimiser, target EMA, length.
  [R] the SemPPL hyperparameters of a public re-implementation
      (github.com/JuergenThann/MAE-CT_SemPPL, contrastive_heads/semppl_head.py and
      yamls/*/stage2_semppl/base16_imagenet10.yaml): 4 large 224-pixel + 2 small 96-pixel
      views, k = 1, 3 semantic positives, alpha 0.2.
Values marked "ours" are from none of these. The paper evaluates by linear evaluation and
fine-tuning of the pretrained encoder; here `test_top1` is the online linear classifier on
frozen features.
"""

from ml_collections import config_dict

from semi_ssl import config_base


def get_config():
  c = config_base.get_base_config()
  c.method = 'semppl'
  c.dataset = 'imagenet2012'
  c.label_fraction = 0.1
  c.decode_size = 256
  c.batch_size = 4096  # [B] batch 4096.
  c.labelled_batch_size = 1024  # Ours.
  c.num_steps = None
  c.num_epochs = 300.0  # [B] 300 epochs (of ImageNet train, the unlabelled images here).
  c.epoch_stream = 'unlabelled'
  c.log_every = 100
  c.eval_every = 3000  # About 10 epochs at batch 4096.
  c.eval.batch_size = 1024
  c.eval.crop_fraction = 0.875  # [O] dataset.py: centre crop 224 / (224 + 32) of the short side.
  c.checkpoint_every = 300  # About 1 epoch.
  c.model.backbone = 'resnet50'  # Paper (abstract); [O] configs/eval.py: ResNet50, width 1.
  c.model.stem = 'imagenet'
  c.model.dtype = 'bfloat16'
  # [R] 4 x 224 and 2 x 96 crops; [O] dataset.py: crops of (0.08, 1) of the area, resized to
  # 224. [O] augmentations.py (BYOL's): flip, jitter (0.4, 0.4, 0.2, 0.1) with p=0.8 (lines
  # 32-71), grayscale p=0.2, blur p=1.0 / 0.1 and solarize p=0 / 0.2 on the first / other large
  # views; its ops (additive brightness, contrast per channel, saturation in HSV: lines
  # 244-289) and crops (dataset.py lines 206-238: sides clipped, bicubic resize).
  c.augment.family = 'byol'
  c.augment.num_global_crops = 4
  c.augment.global_size = 224
  c.augment.global_scale = (0.08, 1.0)
  c.augment.num_local_crops = 2
  c.augment.local_size = 96
  c.augment.local_scale = (0.08, 1.0)
  c.augment.flip = True
  c.augment.color_jitter = (0.4, 0.4, 0.2, 0.1)
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (1.0, 0.1)
  c.augment.local_blur_prob = 0.5  # Ours.
  c.augment.solarize_prob = (0.0, 0.2)
  # [B] LARS (eta 1e-3, momentum 0.9), lr 0.3 x batch / 256 after 10 warm-up epochs, cosine
  # to 0, weight decay 1e-6; biases and norms excluded. [O] optimizers.py and schedules.py
  # have this LARS (defaults eta 1e-3, momentum 0.9) and schedule form (base x batch / 256,
  # linear warm-up, cosine to 0), not the pretraining values.
  c.optimizer.name = 'lars'
  c.optimizer.learning_rate = 0.3
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.warmup_steps = None
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.momentum = 0.9
  c.optimizer.trust_coefficient = 1e-3
  c.optimizer.weight_decay = 1e-6
  c.semppl = config_dict.ConfigDict(
    dict(
      # The SemPPL paper's values for k, the number of semantic positives, alpha and its schedule,
      # the queue size, the temperature, and its ReLICv2 loss terms could not be read here (only its
      # abstract could); where [R] gives one it is cited, from contrastive_heads/semppl_head.py,
      # losses/semppl_loss.py and yamls/3stage/mae_semppl_finetuning/stage2_semppl/
      # base16_imagenet10.yaml (a ViT-B/16 run of 12 images, so not its sizes).
      # [B] projector 4096 -> 256, predictor 4096 -> 256; [O] networks.py: Linear-BN-ReLU-Linear.
      mlp_hidden_dim=4096,
      embed_dim=256,
      mlp_layers=2,
      temperature=0.2,  # Ours; paper unread; [R] temperature 0.15 (ViT).
      # Ours: 16 steps of 4 x 1024 labelled projections; paper unread; [R] queue_size 2560.
      queue_size=65_536,
      knn_k=1,  # [R] topk 1; paper unread.
      knn_approximate=False,  # True on TPU: approx_max_k per device (ours).
      num_semantic_positives=3,  # [R] num_semantic_positives 3; paper unread.
      # [R] alpha 0.2, constant (semppl_head.py has no schedule); paper unread.
      semantic_weight=0.2,
      semantic_warmup_steps=0,
      # The paper trains its classifier on frozen features (linear evaluation).
      classifier_trains_backbone=False,
      # [B] base_target_ema 0.99 (300 epochs); [O] schedules.py: cosine to 1.
      target_momentum=0.99,
      # [R] num_negatives 10: semppl_loss.py keeps 10 random negatives per anchor.
      num_negatives=10,
      # [R] semppl_head.py: loss c (L_augm + alpha L_sempos) + lambda (I_augm + I_sempos), c 0.3,
      # lambda 5; the contrastive terms weigh 1 here, so lambda / c. [R]'s I is not a KL, and
      # only the augmentation term has one here (see methods/semppl.py).
      invariance_weight=5 / 0.3,
      # Off: the paper's choice could not be read; [R] semppl_head.py `_calc_loss` draws the
      # positives anew for every (view, target) pair (True), at 20x the sampling cost here.
      fresh_positives=False,
    )
  )
  return c
