"""Every row each configs/*.py file accepts after its colon, and the check that names them."""

import difflib
import textwrap

from seat_jax import errors
from seat_jax.methods import fda as fda_method


# Rows of the paper's Tables 5 (GTA5) and 6 (SYNTHIA), in the tables' order.
ABLATION_ROWS = ("aa", "it", "sat", "seat", "mul")
# Table 4: the compared methods with and without SEAT, trained on the original GTA5 images.
TABLE4_ROWS = ("adaptsegnet", "adaptsegnet_seat", "advent", "advent_seat")
# Baselines without an adversary: source only (AdaBN starts from it: --config.mode=adabn) and
# CyCADA's pixel-level adaptation alone (its CycleGAN-translated GTA5 images as the source).
SOURCE_ONLY_ROWS = ("source_only", "cycada")
# IntraDA (Pan et al. 2020): its stage 1 (ADVENT's adversarial model), without / with SEAT norms;
# the same names select its stage 2 in configs/gta_stage2.py.
INTRADA_ROWS = ("intrada", "intrada_seat")
# FDA (Yang and Soatto 2020): one model per beta (fda_b001, fda_b005, fda_b009), without / with
# SEAT norms; configs/*_stage2.py with the same row is its self-training round.
FDA_BETA_OF_TAG = {fda_method.beta_tag(b): b for b in fda_method.BETAS}
FDA_ROWS = tuple(f"fda_{tag}{suffix}" for tag in FDA_BETA_OF_TAG for suffix in ("", "_seat"))
# SYNTHIA only: FDA with a 16-output model (synthia16) instead of its 19 outputs (synthia19).
FDA16_SUFFIX = "_out16"
FDA16_ROWS = tuple(row + FDA16_SUFFIX for row in FDA_ROWS)
# Differential treatment (Wang et al. 2020; the paper's Table 4 adds SEAT to it): the
# output-space adversary plus stuff/thing feature losses, without its self-training round.
DIFFERENTIAL_ROWS = ("differential", "differential_seat")
# Toldo et al. 2021: a source-only stage, then feature clustering from it (each with a `_seat`
# twin: SEAT norms in both stages).
CLUSTERING_ROWS = ("clustering_source", "clustering", "clustering_seat_source", "clustering_seat")
# Mixing-based self-training with a mean teacher: DACS, DAFormer's strategy on
# DeepLabV2 and MIC on top of it, each without / with SEAT norms.
MIX_ROWS = tuple(f"{m}{suffix}" for m in ("dacs", "daformer_dlv2", "mic_dlv2")
                 for suffix in ("", "_seat"))
# DAFormer and MIC as published, on SegFormer (MiT-B5, DAFormer's decoder), each without / with
# SEAT norms.
SEGFORMER_ROWS = ("daformer", "daformer_seat", "mic", "mic_seat")
# Every row each configs/*.py file accepts after its colon ("" = the file's default row).
GTA_ROWS = (*ABLATION_ROWS, *TABLE4_ROWS, *SOURCE_ONLY_ROWS, *INTRADA_ROWS, *FDA_ROWS,
            *DIFFERENTIAL_ROWS, *CLUSTERING_ROWS, *MIX_ROWS, *SEGFORMER_ROWS)
SYNTHIA_ROWS = (*ABLATION_ROWS, *FDA_ROWS, *FDA16_ROWS, *DIFFERENTIAL_ROWS, *CLUSTERING_ROWS,
                *MIX_ROWS, *SEGFORMER_ROWS)
# Stage 2 self-trains after an adversarial row (the paper), is IntraDA's second adaptation, or
# one of FDA's self-training rounds.
GTA_STAGE2_ROWS = (*ABLATION_ROWS, *TABLE4_ROWS, *INTRADA_ROWS, *FDA_ROWS)
SYNTHIA_STAGE2_ROWS = (*ABLATION_ROWS, *FDA_ROWS, *FDA16_ROWS)


class UnknownPresetError(errors.UsageError):
  """A configs/*.py row that does not exist; the message lists the file's rows."""


def check_row(row: str, rows: tuple[str, ...], config_file: str, default: str = "mul") -> None:
  """Raises UnknownPresetError naming the closest row and every row of `config_file`."""
  if row in rows:
    return
  close = difflib.get_close_matches(row, rows, n=1, cutoff=0.5)
  hint = f" Did you mean --config={config_file}:{close[0]}?" if close else ""
  listing = textwrap.fill(", ".join(rows), width=96, initial_indent="  ",
                          subsequent_indent="  ")
  raise UnknownPresetError(
      f"{config_file} has no preset {row!r}.{hint}\nIts presets, --config={config_file}:<row> "
      f"(without a row: {default}):\n{listing}")


# The paper's best layer switch (section 5.2): stages 3-4 on GTA5, stage 4 on SYNTHIA.
GTA_LAYER_SWITCH = (3, 4)
SYNTHIA_LAYER_SWITCH = (4,)
