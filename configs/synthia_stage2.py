"""Stage 2 (self-training) after configs/synthia.py; see seat_jax.presets.stage2.

  python -m seat_jax.main --config=configs/synthia_stage2.py --workdir=DIR \
    --config.init_from=PRETRAINED_DIR --config.data.target.pseudo_label_dir=PSEUDO_DIR

`:fda_b001` etc. are FDA's self-training rounds (pseudo_label_dir: an MBT's pseudo-labels).
"""

from seat_jax import presets


def get_config(row: str = "mul"):
  presets.check_row(row or "mul", presets.SYNTHIA_STAGE2_ROWS, "configs/synthia_stage2.py")
  return presets.stage2(presets.synthia(row))
