"""Supervised baseline on the embedded digits data, 5 labels per class (50 images).

python -m semi_ssl.main --config=configs/supervised/digits.py --workdir=/tmp/sup_digits

Weight decay 5e-3 chosen on the validation split (mean val top-1 over seeds 0-1 at 5 labels per
class, 6 settings: `python -m benchmarks.digits_table --search --methods=supervised
--labels_per_class=5 --grid=optimizer.learning_rate=0.02,0.05,0.1
--grid=optimizer.weight_decay=5e-4,5e-3`): 92.71% against 90.62% for the former 5e-4.
"""

from ml_collections import config_dict

from semi_ssl import config_base


def get_config():
  c = config_base.get_base_config()
  c.method = 'supervised'
  c.dataset = 'digits'
  c.labels_per_class = 5
  c.labelled_batch_size = 64
  c.num_steps = 1500
  c.log_every = 100
  c.eval_every = 500
  c.checkpoint_every = 250
  c.augment.num_global_crops = 1
  c.augment.global_scale = (0.6, 1.0)
  c.optimizer.learning_rate = 0.05
  c.optimizer.weight_decay = 5e-3
  c.supervised = config_dict.ConfigDict(dict(label_smoothing=0.1))
  return c
