"""S4L on ImageNet with 10% of the labels, ResNet-50; the variant is the config argument:

python -m semi_ssl.main --config=configs/s4l/imagenet_10pct.py:rotation --workdir=DIR \
    --config.data_dir=TFDS_DIR   # or :exemplar, :vat_entmin, :moam

Sources: [O] the official code, github.com/google-research/s4l at 8f1cf05:
config/s4l_rotation.sh, config/s4l_exemplar.sh, config/vat_entmin.sh, config/moam_step_1.sh
(cited as .sh line) and the files named. Values marked "ours" are not from it. Departures from [O]:
  - ResNet-50 v1 here; [O] ResNet-50 v2 (pre-activation, models/resnet.py lines 341-370) with
    filters_factor 4, i.e. 16 x 4 = 64 root filters (line 385): width 1, as here. MOAM's
    filters_factor 16 (moam_step_1.sh line 27), 4x width, is config.model.width=4 here.
  - [O] labelled subset: its own 128,000-image list (label_map_count_128000_index_0,
    --num_supervised_examples 128000); here the SimCLR 10% subset (label_fraction 0.1).
  - [O] crops: inception_crop, area (0.05, 1), ratio (0.75, 1.33) (inception_preprocessing.py
    lines 116-117), bilinear; here family 'simclr', TF's crop ops with area (0.05, 1).
  - Polyak averaging (MOAM's joint stage, as [O]: moam_step_1.sh line 42, not the variants):
    [O] sets its decay from the steps per epoch (a half-life of one epoch, trainer.py line
    219); here config.polyak_decay is that number at [O]'s batch, so it does not follow a
    changed batch size.
  - MOAM's retrain and finetune stages: [O] publishes no config for them (only
    moam_step_1.sh); their values here are ours (the joint stage's recipe for retrain; a short
    fine-tune at a low learning rate).
"""

from ml_collections import config_dict

from semi_ssl import config_base

# [O] per variant: global batch (labelled = unlabelled: --unsup_batch_mult 1), base lr (not
# scaled: --lr_scale_batch_size 0), --schedule 'WARMUP,DECAY1,DECAY2,DECAY3,END' in epochs: the
# warm-up, and the epochs after which the lr is multiplied by 0.1 (trainer.py lines 34-54, 82-92;
# --lr_decay_factor, main.py line 132), here as fractions of the run's 200 epochs.
_RECIPES = {
  # s4l_rotation.sh lines 22, 31-33: '5,140,160,180,200'.
  'rotation': dict(batch=256, lr=0.03, warmup=5.0, decays=(140, 160, 180)),
  # s4l_exemplar.sh lines 23, 32-34: '10,140,160,180,200'.
  'exemplar': dict(batch=512, lr=0.1, warmup=10.0, decays=(140, 160, 180)),
  # vat_entmin.sh lines 22, 29-33: '5,140,160,180,200'.
  'vat_entmin': dict(batch=256, lr=0.03, warmup=5.0, decays=(140, 160, 180)),
  # moam_step_1.sh lines 22, 29-30, 33: lr 0.2 per 256 images (--lr_scale_batch_size 256),
  # '10,100,150,190,200'.
  'moam': dict(batch=128, lr=0.2, warmup=10.0, decays=(100, 150, 190), lr_scaling='linear'),
}
_EPOCHS = 200.0  # [O] --schedule's last entry.


def get_config(variant: str = 'rotation'):
  recipe = _RECIPES.get(variant, _RECIPES['rotation'])  # An unknown variant: validate names it.
  c = config_base.get_base_config()
  c.method = 's4l'
  c.dataset = 'imagenet2012'
  c.label_fraction = 0.1
  c.decode_size = 256
  c.batch_size = recipe['batch']
  c.labelled_batch_size = recipe['batch']
  c.num_steps = None
  c.num_epochs = _EPOCHS
  # [O]'s epoch: its 128,000 labelled images at --batch_size (trainer.py lines 65-68,
  # --num_supervised_examples); here the 128,116 of the SimCLR subset, the same steps.
  c.epoch_stream = 'labelled'
  c.log_every = 100
  c.eval_every = 10_000  # Ours.
  c.checkpoint_every = 1000  # Ours.
  c.eval.batch_size = 1024
  c.eval.crop_fraction = 0.875  # [O] --preprocessing_eval 'resize_small(256)|crop(224)'.
  c.model.backbone = 'resnet50'
  c.model.stem = 'imagenet'
  # Ours; float32 for VAT, whose finite-difference step (vat_xi) bfloat16 would round away.
  c.model.dtype = 'float32' if variant in ('vat_entmin', 'moam') else 'bfloat16'

  # [O] --preprocessing 'inception_crop|resize(224)|flip_lr|-1_to_1' (rotation and VAT: no
  # colour distortion); exemplar 'crop_inception_patches(8,224)|hsvnoise|flip_lr|-1_to_1'.
  c.augment.family = 'simclr'
  c.augment.num_global_crops = 1
  c.augment.global_size = 224
  c.augment.global_scale = (0.05, 1.0)
  c.augment.num_local_crops = 0
  c.augment.flip = True
  c.augment.color_jitter = (0.0, 0.0, 0.0, 0.0)
  c.augment.grayscale_prob = 0.0
  c.augment.blur_prob = (0.0,)
  c.augment.solarize_prob = (0.0,)

  # [O] SGD with momentum 0.9 (trainer.py lines 108-109); weight decay 1e-3 (.sh --weight_decay,
  # an l2 regulariser on the kernels: models/utils.py); biases excluded here.
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = recipe['lr']
  c.optimizer.lr_scaling = recipe.get('lr_scaling', 'none')
  c.optimizer.warmup_steps = None
  c.optimizer.warmup_epochs = recipe['warmup']
  c.optimizer.schedule = 'piecewise'
  c.optimizer.decay_boundaries = tuple(epoch / _EPOCHS for epoch in recipe['decays'])
  c.optimizer.decay_factor = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-3

  c.s4l = config_dict.ConfigDict(
    dict(
      variant=variant,
      stage='joint',  # moam: joint | retrain | finetune (config_base.s4l_moam_stages sets it).
      supervised_weight=1.0,  # The labelled cross-entropy's: 1 in [O]'s variants.
      label_smoothing=0.0,  # Of the labelled cross-entropy's targets: [O] has none.
      # [O] s4l_rotation.sh lines 27-30, 39-41: all four rotations of labelled and unlabelled
      # images, weight 1; rotation.py lines 113-119: the classifier sees all four.
      rotations='all',
      rotation_weight=1.0,
      classify_rotations=True,
      # [O] s4l_exemplar.sh lines 19, 28, 40: 8 copies, embedding 1000, weight 1; exemplar.py
      # line 280: soft margin, margin 0.
      num_exemplar_copies=8,
      exemplar_embed_dim=1000,
      triplet_margin=0.0,
      triplet_soft=True,
      exemplar_weight=1.0,
      # [O] vat_entmin.sh lines 38-43: VAT on labelled images too, entmin 1, VAT weight 0.5,
      # vat_eps 40 in [O]'s [-1, 1] pixel range, here in units of the per-channel std (about
      # 0.226 of [0, 1], i.e. 0.113 of [-1, 1]): 40 / 0.452 = 88.5. vat.py line 91: one power
      # iteration. xi: ours, 0.5 (1.3e-3 per pixel, as digits'); [O] vat_utils.py line 25's
      # 1e-6 moves a 224 x 224 x 3 image's pixels by less than float32 resolves.
      vat_xi=0.5,
      vat_epsilon=88.5,
      vat_power_iterations=1,
      vat_weight=0.5,
      entmin_weight=1.0,
      vat_labelled=True,
      # moam retrain: the weight of the unlabelled images' cross-entropy to their pseudo-labels
      # (ours), and the frozen teacher that gives them (the joint stage, this model).
      pseudo_label_weight=1.0,
      teacher=config_base.frozen_teacher(c.model),
    )
  )
  if variant == 'exemplar':
    c.augment.num_global_crops = c.s4l.num_exemplar_copies
    # Ours, standing in for [O]'s hsvnoise (preprocess.py lines 252-286: hue +-0.1, S and V
    # powered, scaled and shifted), which this code lacks.
    c.augment.color_jitter = (0.4, 0.4, 0.4, 0.1)
  if variant == 'moam':
    return _moam(c)
  return c


def _moam(c):
  """MOAM's three stages; the joint one per [O] moam_step_1.sh."""
  c.model.width = 4  # Line 27: filters_factor 16.
  c.optimizer.weight_decay = 2e-4  # Line 28.
  # rotation_vat.py lines 142-150: (1 - w_c - w_v) rotation + w_c class + w_v VAT + entmin,
  # w_c = --sup_weight 0.3, w_v = --vat_weight 0.3, --entmin_factor 0.3 (lines 39, 41, 45).
  c.s4l.supervised_weight = 0.3
  c.s4l.rotation_weight = 0.4
  c.s4l.vat_weight = 0.3
  c.s4l.entmin_weight = 0.3
  c.s4l.vat_epsilon = 70.8  # Line 40: vat_eps 32 in [-1, 1] units, / 0.452 (see above).
  # rotation_vat.py lines 91-100: VAT on the (rotated) unlabelled images only; line 38's
  # --apply_vat_to_labeled is read by vat.py, not by rotation_vat.py.
  c.s4l.vat_labelled = False
  # Line 42: --polyak_averaging, a half-life of one epoch: decay 0.5 ** (1 / steps per epoch)
  # (trainer.py line 219), 128,000 // 128 = 1,000 steps (lines 65-68), as 128,116 // 128 here.
  c.polyak_decay = 0.5 ** (1 / 1000)
  no_averaging = lambda: config_dict.placeholder(float)  # Ours: [O] has no config for these.
  return config_base.s4l_moam_stages(
    c,
    retrain=dict(s4l=dict(supervised_weight=1.0), polyak_decay=no_averaging()),  # Ours.
    finetune=dict(  # Ours: 30 epochs of the labelled images, lr 0.01 cosine, no warm-up.
      s4l=dict(supervised_weight=1.0),
      num_epochs=30.0,
      optimizer=dict(learning_rate=0.01, lr_scaling='none', warmup_epochs=0.0, schedule='cosine'),
      polyak_decay=no_averaging(),
    ),
  )
