"""SYNTHIA-RAND-CITYSCAPES -> Cityscapes, stage 1; see seat_jax.presets.synthia for the details.

Rows of the paper's ablation table as variants after a colon: `--config=configs/synthia.py:aa`
(AdaptSegNet single level, shared frozen BN), `:it` (+ translated source images), `:sat`,
`:seat` (+ SEAT and the layer switch), and the default `mul` (+ multi-level adaptation).
FDA: `:fda_b001`, `:fda_b005`, `:fda_b009` (`_seat` for SEAT norms; `--config.mode=fda_rounds`),
19 outputs as FDA trains them, scored mIoU13/16; `_out16` (e.g. `:fda_b001_seat_out16`): a
16-output model instead.
The other compared methods as in configs/gta.py: `:differential`, `:clustering_source` then
`:clustering`, `:dacs`, `:daformer_dlv2`, `:mic_dlv2` (each with a `_seat` twin; the DAFormer
and MIC rows on mmseg's ResNet-101 V1c, as in configs/gta.py).
DAFormer and MIC on SegFormer (docs/segformer.md): `:daformer`, `:mic` (each with a `_seat`
twin), 19 outputs scored mIoU16/13 as DAFormer does.
"""

from seat_jax import presets


def get_config(row: str = "mul"):
  return presets.synthia(row)
