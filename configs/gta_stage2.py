"""Stage 2 (self-training) after configs/gta.py; see seat_jax.presets.stage2.

  python -m seat_jax.main --config=configs/gta_stage2.py --workdir=DIR \
    --config.init_from=PRETRAINED_DIR --config.data.target.pseudo_label_dir=PSEUDO_DIR

`:intrada` and `:intrada_seat` are IntraDA's stage 2 instead: the easy split with its
pseudo-labels as source, the hard split as target, from mode=entropy_rank's lists
(`--config=configs/gta.py:intrada --config.mode=intrada` runs both stages and the ranking).
`--config=configs/gta.py --config.mode=pipeline` runs stage 1, its pseudo-labels and this.
`:fda_b001` etc. are FDA's self-training rounds (pseudo_label_dir: an MBT's pseudo-labels).
"""

from seat_jax import presets


def get_config(row: str = "mul"):
  presets.check_row(row or "mul", presets.GTA_STAGE2_ROWS, "configs/gta_stage2.py")
  if row in presets.INTRADA_ROWS:  # IntraDA's easy -> hard stage (presets.intrada_stage2)
    return presets.intrada_stage2(presets.gta(row))
  return presets.stage2(presets.gta(row))
