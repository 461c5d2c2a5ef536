"""S4L on ImageNet with 10% of the labels, ResNet-50; the variant is the config argument:

python -m semi_ssl.main --config=configs/s4l/imagenet_10pct.py:rotation --workdir=DIR \
    --config.data_dir=TFDS_DIR   # or :exemplar, :vat_entmin, :moam

Sources: [O] the official code, github.com/google-research/s4l at 8f1cf05:
config/s4l_rotation.sh, config/s4l_exemplar.sh, config/vat_entmin.sh, config/moam_step_1.sh
(cited as .sh line) and the files named. Values marked "ours" are not from it. Departures from [O]:
  - ResNet-50 v1 here; [O] ResNet-50 v2 (pre-activation, models/resnet.py lines 341-370) with
    filters_factor 4, i.e. 16 x 4 = 64 root filters (line 385): width 1, as here. MOAM's
    filters_factor 16 (moam_step_1.sh line 27), 4x width, is config.model.width=4 here.
  - [O] lr schedule: piecewise constant, linear warm-up then x0.1 at epochs 140, 160, 180 of
    200 (--schedule, trainer.py lines 78-93); this trainer has warm-up then cosine only.
  - [O] labelled subset: its own 128,000-image list (label_map_count_128000_index_0,
    --num_supervised_examples 128000); here the SimCLR 10% subset (label_fraction 0.1).
  - Epochs here count the unlabelled images; [O]'s count the whole train split.
  - [O] crops: inception_crop, area (0.05, 1), ratio (0.75, 1.33) (inception_preprocessing.py
    lines 116-117), bilinear; here family 'simclr', TF's crop ops with area (0.05, 1).
  - Polyak averaging: [O] uses it for MOAM only (moam_step_1.sh line 42), not these variants;
    this trainer has none.
  - MOAM's retrain and finetune stages: [O] publishes no config for them (only
    moam_step_1.sh); their values here are ours (the joint stage's recipe for retrain; a short
    fine-tune at a low learning rate).
"""

from ml_collections import config_dict

from semi_ssl import config_base

# [O] per variant: global batch (labelled = unlabelled: --unsup_batch_mult 1), base lr (not
# scaled: --lr_scale_batch_size 0), warm-up epochs (the first --schedule entry).
_RECIPES = {
  'rotation': dict(batch=256, lr=0.03, warmup=5.0),  # s4l_rotation.sh lines 22, 31-33.
  'exemplar': dict(batch=512, lr=0.1, warmup=10.0),  # s4l_exemplar.sh lines 23, 32-34.
  'vat_entmin': dict(batch=256, lr=0.03, warmup=5.0),  # vat_entmin.sh lines 22, 29-33.
  # moam_step_1.sh lines 22, 29-30, 33: lr 0.2 per 256 images (--lr_scale_batch_size 256).
  'moam': dict(batch=128, lr=0.2, warmup=10.0, lr_scaling='linear'),
}


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
  c.num_epochs = 200.0  # [O] --schedule's last entry.
  c.epoch_stream = 'unlabelled'
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
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-3

  c.s4l = config_dict.ConfigDict(
    dict(
      variant=variant,
      stage='joint',  # moam: joint | retrain | finetune (config_base.s4l_moam_stages sets it).
      supervised_weight=1.0,  # The labelled cross-entropy's: 1 in [O]'s variants.
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
  return config_base.s4l_moam_stages(
    c,
    retrain=dict(s4l=dict(supervised_weight=1.0)),  # Ours.
    finetune=dict(  # Ours: 30 epochs of the labelled images, lr 0.01, no warm-up.
      s4l=dict(supervised_weight=1.0),
      epoch_stream='labelled',
      num_epochs=30.0,
      optimizer=dict(learning_rate=0.01, lr_scaling='none', warmup_epochs=0.0),
    ),
  )
