"""SemPPL on CIFAR-10 with a ResNet-18 (CIFAR stem), 25 labels per class by default.

python -m semi_ssl.main --config=configs/semppl/cifar10.py --workdir=/tmp/semppl_cifar10 \
    [--config.labels_per_class=4|25|400]

No value below is cited from SemPPL's own sources: the paper's semi-supervised results (its
abstract) are ImageNet's, its text past the abstract could not be read here, and the official
release (github.com/google-deepmind/semppl) is ImageNet linear-evaluation code only. Sources:
  [S] solo-learn's BYOL recipe for CIFAR (github.com/vturrisi/solo-learn,
      scripts/pretrain/cifar/byol.yaml and augmentations/asymmetric.yaml): SemPPL's networks
      (online projector + predictor, EMA target) are BYOL's.
  [R] the SemPPL hyperparameters of a public re-implementation
      (github.com/JuergenThann/MAE-CT_SemPPL, contrastive_heads/semppl_head.py and its
      yamls/*semppl* configs): 4 large + 2 small views, k = 1, 3 semantic positives, alpha 0.2.
Values marked "ours" are neither.
"""

import ml_collections

from semi_ssl import config_base


def get_config() -> ml_collections.ConfigDict:
  c = config_base.get_base_config()
  c.method = 'semppl'
  c.dataset = 'cifar10'
  c.labels_per_class = 25  # The FixMatch benchmarks: 4, 25 or 400 per class.

  c.batch_size = 256  # [S] batch_size 256.
  c.labelled_batch_size = 64  # Ours.
  c.num_steps = None
  c.num_epochs = 1000.0  # [S] max_epochs 1000 (here of the unlabelled images).
  c.epoch_stream = 'unlabelled'
  c.log_every = 200
  c.eval_every = 10_000  # About 50 epochs at batch 256.
  c.checkpoint_every = 2000  # About 10 epochs.

  c.model.backbone = 'resnet18'  # [S] resnet18; solo-learn's CIFAR stem: 3x3/1 conv, no pool.
  c.model.stem = 'cifar'
  c.model.dtype = 'bfloat16'  # [S] precision 16.

  # [R] 4 large views and 2 small ones (16 pixels, as [R]'s CIFAR configs); [S] crops of
  # (0.08, 1) of the area, flip, jitter (0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale p=0.2, no
  # blur, solarize p=0.2 on the second view only. The ops are SemPPL's, i.e. BYOL's
  # (github.com/google-deepmind/semppl utils/augmentations.py lines 244-289, dataset.py lines
  # 206-238); [S] uses torchvision's.
  c.augment.family = 'byol'
  c.augment.num_global_crops = 4
  c.augment.global_size = 32
  c.augment.global_scale = (0.08, 1.0)
  c.augment.num_local_crops = 2
  c.augment.local_size = 16
  c.augment.local_scale = (0.08, 1.0)
  c.augment.flip = True
  c.augment.color_jitter = (0.4, 0.4, 0.2, 0.1)
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (0.0,)
  c.augment.solarize_prob = (0.0, 0.2, 0.0)

  # [S] LARS, lr 1.0 (warm-up then cosine), eta 0.02, weight decay 1e-5, biases and norms
  # excluded; 10 warm-up epochs as solo-learn's warmup_cosine default. The lr is for batch 256;
  # the linear scaling to other batch sizes is ours.
  c.optimizer.name = 'lars'
  c.optimizer.learning_rate = 1.0
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.warmup_steps = None
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.weight_decay = 1e-5
  c.optimizer.trust_coefficient = 0.02

  c.eval.batch_size = 1024  # Divisible by any power-of-two device count.

  c.semppl = ml_collections.ConfigDict(
    dict(
      mlp_hidden_dim=4096,
      embed_dim=256,
      mlp_layers=2,  # [S] proj/pred hidden 4096, out 256.
      temperature=0.2,  # Ours.
      queue_size=16_384,  # Ours: 32 steps of 4 x 128 labelled projections.
      knn_k=1,
      knn_approximate=False,  # [R] topk 1.
      num_semantic_positives=3,
      semantic_weight=0.2,  # [R] num_semantic_positives 3, alpha 0.2.
      semantic_warmup_steps=0,  # Ours: alpha from the first step.
      # The paper trains its classifier on frozen features (linear evaluation).
      classifier_trains_backbone=False,
      target_momentum=0.99,
      # Ours: every other image of the batch a negative, no invariance penalty, one draw of
      # semantic positives per step (imagenet_10pct.py has [R]'s values for these).
      num_negatives=0,
      invariance_weight=0.0,
      fresh_positives=False,
    )
  )  # [S] base_tau 0.99, final_tau 1.0 (cosine).
  return c
