"""SeLa on ImageNet with 10% of the labels, ResNet-50; the semi-supervised form (ours,
methods/sela.py) by default, the paper's unsupervised form with `:unsupervised`:

python -m semi_ssl.main --config=configs/sela/imagenet_10pct.py --workdir=DIR \
    --config.data_dir=TFDS_DIR   # or imagenet_10pct.py:unsupervised

Sources: [O] the official code, github.com/yukimasano/self-label at 3891e37: scripts/resnet.sh
(cited as .sh line), main.py, sinkhornknopp.py, data.py. Values marked "ours" are not from it.
Departures from [O]:
  - ResNet-50 v1 here; [O] resnet.sh's ARCH=resnetv2 (pre-activation ResNet-50).
  - [O] lr schedule: x0.1 every `lrdrop` = 150 epochs (main.py:28-29, 181); cosine here.
  - [O] ColorJitter(0.4, 0.4, 0.4, 0.4) on every crop (data.py:56-64); here with p=0.8 (this
    code's jitter), and hue 0.4 as [O].
  - Epochs here count the unlabelled images (imagenet2012 train but the minival).
  - The semi-supervised form, its labelled subset (SimCLR's 10%) and labelled batch are ours.
"""

from ml_collections import config_dict

from semi_ssl import config_base, errors


def get_config(form: str = ''):
  errors.require(
    form in ('', 'unsupervised'), f"unknown argument ':{form}': use ':unsupervised' or none."
  )
  c = config_base.get_base_config()
  c.method = 'sela'
  c.dataset = 'imagenet2012'
  c.label_fraction = 0.1
  c.decode_size = 256
  c.batch_size = 256  # [O] resnet.sh: bs=256.
  c.labelled_batch_size = 64  # Ours (semi-supervised form only).
  c.num_steps = None
  c.num_epochs = 400.0  # [O] resnet.sh: nepochs=400.
  c.epoch_stream = 'unlabelled'
  c.log_every = 100
  c.eval_every = 10_000  # Ours.
  c.checkpoint_every = 1000  # Ours.
  c.eval.batch_size = 1024
  c.eval.crop_fraction = 0.875  # Resize 256, centre crop 224 ([O] data.py:33-39, augs=0).
  c.model.backbone = 'resnet50'
  c.model.stem = 'imagenet'
  c.model.dtype = 'bfloat16'

  # [O] data.py:56-64 (augs=3, resnet.sh): RandomResizedCrop(224) (scale 0.08-1, bilinear),
  # RandomGrayscale(0.2), ColorJitter(0.4, 0.4, 0.4, 0.4), flip; one view per image.
  c.augment.family = 'torchvision_bilinear'
  c.augment.num_global_crops = 1
  c.augment.global_size = 224
  c.augment.global_scale = (0.08, 1.0)
  c.augment.num_local_crops = 0
  c.augment.flip = True
  c.augment.color_jitter = (0.4, 0.4, 0.4, 0.4)
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (0.0,)
  c.augment.solarize_prob = (0.0,)

  # [O] main.py:137-140, 180-182: SGD, momentum 0.9 (:31), lr 0.08, weight decay 10^-5, no
  # warm-up; biases and normalisation parameters excluded from the decay here.
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.08
  c.optimizer.warmup_steps = 0
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-5
  c.optimizer.end_learning_rate_factor = 0.0

  c.sela = config_dict.ConfigDict(
    dict(
      # Ours: head 0's first 1000 clusters are the classes, the labelled images fixed rows of its
      # transport problem (methods/sela.py); False: the paper's form, kNN probe only.
      semi_supervised=form != 'unsupervised',
      num_heads=10,  # [O] resnet.sh: hc=10.
      num_clusters=3000,  # [O] resnet.sh: ncl=3000.
      lam=25.0,  # [O] main.py:188.
      tol=0.1,  # [O] sinkhornknopp.py:123.
      max_iters=10_000,  # Ours: [O] has no bound; confident heads need thousands (sinkhorn.py).
      num_label_updates=100,  # [O] resnet.sh: nopts=100.
      relabel_power=2,  # [O] main.py:135: linspace(0, 1, nopts) ** 2.
    )
  )
  return c
