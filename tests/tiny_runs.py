"""The tiny training run several test files share (compiled once, thanks to the XLA cache)."""

from seat_jax import presets


def tiny_train_config(data_dir, num_steps: int = 4):
  """SEAT on synthetic_streets at 32x64, batch 2, a checkpoint every 2 steps, logs every step."""
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
