"""What several test files share: the tiny training run and an in-memory data source."""

from seat_jax import presets


def tiny_train_config(data_dir, num_steps: int = 4):
  """The tiny run (compiled once per machine, thanks to the XLA cache): SEAT on synthetic_streets at 32x64, batch 2, a checkpoint every 2 steps, logs every step."""
  config = presets.demo("seat")
  config.data.data_dir = data_dir
  for split in (config.data.source, config.data.target, config.data.val):
    split.resize_hw = (32, 64)
  config.data.source.crop_hw = (32, 64)
  config.train.batch_size = 2
  config.train.num_steps = num_steps
  config.train.lr_horizon_steps = 100
  config.train.log_every = 1
  config.train.checkpoint_every = 2
  config.train.eval_every = 0
  return config


class ListSource:
  """A random-access data source over a list of examples (what tfds.data_source looks like)."""

  def __init__(self, examples):
    self._examples = list(examples)

  def __len__(self):
    return len(self._examples)

  def __getitem__(self, index):
    return self._examples[index]
