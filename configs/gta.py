"""GTA5 -> Cityscapes, stage 1; see seat_jax.presets.gta for the details.

Rows of the paper's ablation table as variants after a colon: `--config=configs/gta.py:aa`
(AdaptSegNet single level, shared frozen BN), `:it` (+ translated source images), `:sat`,
`:seat` (+ SEAT and the layer switch), and the default `mul` (+ multi-level adaptation).
"""

from seat_jax import presets


def get_config(row: str = "mul"):
  return presets.gta(row)
