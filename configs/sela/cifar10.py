"""SeLa on CIFAR-10 with a ResNet-18 (CIFAR stem), 25 labels per class; the semi-supervised form
(ours, methods/sela.py) by default, the paper's unsupervised form with `:unsupervised`:

python -m semi_ssl.main --config=configs/sela/cifar10.py --workdir=/tmp/sela_cifar10

Sources: [O] the official code, github.com/yukimasano/self-label at 3891e37: scripts/cifar.sh
(cited as .sh), cifar.py. Values marked "ours" are not from it. Departures from [O]:
  - ResNet-18 with the CIFAR stem here; [O] cifar.sh: arch=alexnet.
  - [O] lr schedule: steps of x0.1 (cifar.py:246-262); cosine here.
  - [O] crops: Resize(256), RandomResizedCrop(224, scale 0.2-1) (cifar.py:143-151); here 32
    pixels, scale 0.2-1; ColorJitter(0.4, 0.4, 0.4, 0.4) with p=0.8 here, on every crop in [O].
  - The semi-supervised form, its labelled subset and labelled batch are ours.
"""

from ml_collections import config_dict

from semi_ssl import config_base, errors


def get_config(form: str = ''):
  return cifar_config('cifar10', form)


def cifar_config(dataset: str, form: str):
  """The CIFAR-10 and CIFAR-100 recipe (they differ in the dataset only)."""
  errors.require(
    form in ('', 'unsupervised'), f"unknown argument ':{form}': use ':unsupervised' or none."
  )
  c = config_base.get_base_config()
  c.method = 'sela'
  c.dataset = dataset
  c.labels_per_class = 25  # Ours (semi-supervised form only).
  c.batch_size = 128  # [O] cifar.sh: bs=128.
  c.labelled_batch_size = 64  # Ours.
  c.num_steps = None
  c.num_epochs = 400.0  # [O] cifar.sh: epochs=400.
  c.epoch_stream = 'unlabelled'
  c.log_every = 100
  c.eval_every = 10_000  # Ours.
  c.checkpoint_every = 2000  # Ours.
  c.eval.batch_size = 1024
  c.model.backbone = 'resnet18'
  c.model.stem = 'cifar'
  c.model.dtype = 'bfloat16'

  # [O] cifar.py:143-151: RandomResizedCrop(scale=(0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.4),
  # RandomGrayscale(0.2), flip; one view per image.
  c.augment.family = 'torchvision_bilinear'
  c.augment.num_global_crops = 1
  c.augment.global_size = 32
  c.augment.global_scale = (0.2, 1.0)
  c.augment.num_local_crops = 0
  c.augment.flip = True
  c.augment.color_jitter = (0.4, 0.4, 0.4, 0.4)
  c.augment.grayscale_prob = 0.2
  c.augment.blur_prob = (0.0,)
  c.augment.solarize_prob = (0.0,)

  # [O] cifar.sh: lr=0.03; cifar.py:126, 206: SGD, momentum 0.9, weight decay 5e-4; no warm-up.
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.03
  c.optimizer.warmup_steps = 0
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.end_learning_rate_factor = 0.0

  c.sela = config_dict.ConfigDict(
    dict(
      # Ours: head 0's first C clusters are the classes, the labelled images fixed rows of its
      # transport problem (methods/sela.py); False: the paper's form, kNN probe only.
      semi_supervised=form != 'unsupervised',
      num_heads=10,  # [O] cifar.sh: hc=10.
      num_clusters=128,  # [O] cifar.sh: ncl=128 (>= CIFAR-100's 100 classes).
      lam=10.0,  # [O] cifar.py:121.
      tol=0.01,  # [O] cifar.py:48.
      max_iters=10_000,  # Ours: [O] has no bound; confident heads need thousands (sinkhorn.py).
      num_label_updates=400,  # [O] cifar.sh: nopts=400.
      relabel_power=1,  # [O] cifar.py:186: linspace(0, 1, nopts), linear.
    )
  )
  return c
