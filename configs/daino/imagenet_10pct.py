"""Daino on ImageNet with 10% of the labels (the SimCLR subset), ResNet-50.

python -m semi_ssl.main --config=configs/daino/imagenet_10pct.py --workdir=DIR \
    --config.data_dir=TFDS_DIR

Sources (github.com/pietroastolfi/suave-daino at 9adf13d, the paper's code):
  [D] daino/scripts/train_10perc.sh and daino/main_daino.py: Daino's own recipe. The paper runs
      Daino on a ViT-S/16 started from the self-supervised DINO checkpoint, with AdamW; this
      codebase has no ViT, so the backbone is a ResNet-50 instead.
  [S] suave/scripts/train_10perc.sh and suave/main_suave.py: the paper's ResNet-50 recipe
      (Suave), for what a ResNet-50 with LARS needs and [D] does not give.
The official Daino recipe is ViT-S/16 with AdamW ([D]: --lr 0.00024 per 256 images, 4 warm-up
epochs, --min_lr 1e-05, weight decay 0.04 -> 0.4 on a cosine, drop path 0.1): the ResNet-50
values below (backbone, LARS optimiser, its learning rate and weight decay) are ours, taken
from [S], not a recipe the paper ran. Values marked "ours" are not in the paper's code. The
paper starts from a self-supervised checkpoint ([D]: DINO, [S]: SwAV); set `init_from` to a
pretrained run to do the same.
"""

from ml_collections import config_dict

from semi_ssl import config_base


def get_config():
  c = config_base.get_base_config()
  c.method = 'daino'
  c.dataset = 'imagenet2012'
  c.label_fraction = 0.1
  c.decode_size = 256
  # [D] README: 2 nodes x 8 GPUs x (64 unlabelled + 32 labelled) = 1024 + 512 images a step.
  c.batch_size = 1024
  c.labelled_batch_size = 512
  c.num_steps = None
  c.num_epochs = 60.0  # [D] --epochs 60, of the unlabelled images (all of ImageNet train).
  c.epoch_stream = 'unlabelled'
  c.log_every = 100
  c.eval_every = 6000  # About 5 epochs at batch 1024.
  c.eval.crop_fraction = 0.875  # Resize 256, centre crop 224.
  c.checkpoint_every = 1200  # About 1 epoch.
  c.model.backbone = 'resnet50'
  c.model.stem = 'imagenet'
  c.model.dtype = 'bfloat16'  # [S] --use_fp16 true (mixed precision).
  # [D] 2 x 224 global crops of (0.25, 1) of the area, 8 x 96 local crops of (0.05, 0.25);
  # DINO's augmentations ([D] main_daino.py lines 659-696, DataAugmentationDINO): torchvision,
  # RandomResizedCrop with Image.BICUBIC.
  c.augment.family = 'torchvision_bicubic'
  c.augment.num_global_crops = 2
  c.augment.global_size = 224
  c.augment.global_scale = (0.25, 1.0)
  c.augment.num_local_crops = 8
  c.augment.local_size = 96
  c.augment.local_scale = (0.05, 0.25)
  c.augment.flip = True
  c.augment.color_jitter = (0.4, 0.4, 0.2, 0.1)  # [D] main_daino.py line 664.
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (1.0, 0.1)
  c.augment.local_blur_prob = 0.5
  c.augment.solarize_prob = (0.0, 0.2)
  # Labelled images ([D] at commit 9adf13d, main_daino.py lines 238-245, `tr_lab`): one
  # RandomResizedCrop(224) of (0.08, 1) of the area with torchvision's bilinear default, flip,
  # colour jitter (0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale p=0.2, no blur or solarize.
  c.augment.labelled = config_base.single_labelled_crop(
    c.augment,
    family='torchvision_bilinear',
    color_jitter=(0.4, 0.4, 0.4, 0.1),
    grayscale_prob=0.2,
  )
  # [S] LARS: base lr 0.4 at 256 unlabelled images, final lr 0.001, 5 warm-up epochs,
  # momentum 0.9, eta 0.001, weight decay 1e-6 (main_suave.py default). The lr is scaled
  # linearly to the batch (ours): 1.6 at the 1024 unlabelled images of [D].
  c.optimizer.name = 'lars'
  c.optimizer.learning_rate = 0.4
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.end_learning_rate_factor = 0.001 / (0.4 * 1024 / 256)  # 0.001 at batch 1024.
  c.optimizer.warmup_steps = None
  c.optimizer.warmup_epochs = 5.0
  c.optimizer.momentum = 0.9
  c.optimizer.trust_coefficient = 0.001
  c.optimizer.weight_decay = 1e-6
  c.daino = config_dict.ConfigDict(
    dict(
      # DINOHead ([D] src/vision_transformer.py lines 297-355): 3 layers, 2048 hidden, 256 out,
      # GELU without BatchNorm (--use_bn_in_head false), weight-normalised prototypes whose
      # norms are learnt (--norm_last_layer false).
      head='dino',
      projector_hidden_dim=2048,
      embed_dim=256,
      projector_layers=3,
      norm_last_layer=False,
      # [D] never renormalises the prototypes' directions (weight_v), unlike [S].
      normalize_prototypes=False,
      num_prototypes=0,  # 0: one per class; [D] --out_dim 1000.
      student_temperature=0.1,  # [D] --temperature 0.1.
      label_smoothing=0.01,  # [D] --label_smoothing default 0.01.
      # [D] --warmup_teacher_temp 0.04 --teacher_temp 0.07 --warmup_teacher_temp_epochs 10.
      teacher_temperature=0.07,
      teacher_temperature_warmup_start=0.04,
      teacher_temperature_warmup_steps=config_dict.placeholder(int),
      teacher_temperature_warmup_epochs=10.0,
      # Once an epoch ([D] DINOLoss: teacher_temp_schedule[epoch]).
      teacher_temperature_update_steps=config_dict.placeholder(int),
      teacher_temperature_update_epochs=1.0,
      teacher_momentum=0.99,  # [D] --momentum_teacher 0.990, cosine to 1.
      center_momentum=0.9,  # [D] DINOLoss default.
      # [D] --mixup_lab true (--mixup_lab_type default 'extend'); main_daino.py lines
      # 249-261: mixup_alpha=1., cutmix_alpha=1., switch_prob=0.5, mode='batch', prob 1 in
      # 'extend' mode: the labelled batch is extended with its mixes (src/mixup.py). [D]
      # --mixup_unlab false (main_daino.py leaves it a TODO, line 508).
      mixup_alpha=1.0,
      cutmix_alpha=1.0,
      mixup_mode='extend',
      # main_daino.py lines 517-525: each term weighs its share of the crops (labelled images
      # with their mixes, 2 + 8 crops per unlabelled image): 1024 / (10240 + 1024) here.
      loss_weighting='crops',
    )
  )
  return c
