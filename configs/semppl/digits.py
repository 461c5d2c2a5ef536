"""SemPPL on the embedded digits data, 5 labels per class (50 labelled images).

python -m semi_ssl.main --config=configs/semppl/digits.py --workdir=/tmp/semppl_digits
"""
from ml_collections import config_dict

from semi_ssl import config_base


def get_config():
  c = config_base.get_base_config()
  c.method = 'semppl'
  c.dataset = 'digits'
  c.labels_per_class = 5
  c.batch_size = 128
  c.labelled_batch_size = 32
  c.num_steps = 1000
  c.log_every = 100
  c.eval_every = 500
  c.checkpoint_every = 250
  c.augment.num_global_crops = 2
  c.augment.global_scale = (0.5, 1.0)
  c.augment.num_local_crops = 2
  c.augment.local_size = 6
  c.augment.local_scale = (0.3, 0.6)
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 5e-4
  c.semppl = config_dict.ConfigDict(dict(
      mlp_hidden_dim=256, embed_dim=64, mlp_layers=2,
      temperature=0.2,
      queue_size=512,             # 8 steps of 2 x 32 labelled projections.
      knn_k=10, knn_approximate=False,
      num_semantic_positives=8, semantic_weight=5.0, semantic_warmup_steps=300,
      classifier_trains_backbone=True,
      target_momentum=0.95))      # cosine schedule to 1.0 over num_steps
  return c
