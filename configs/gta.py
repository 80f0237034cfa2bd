"""GTA5 -> Cityscapes, stage 1; see seat_jax.presets.gta for the details.

Rows of the paper's ablation table as variants after a colon: `--config=configs/gta.py:aa`
(AdaptSegNet single level, shared frozen BN), `:it` (+ translated source images), `:sat`,
`:seat` (+ SEAT and the layer switch), and the default `mul` (+ multi-level adaptation).
Table 4: `:adaptsegnet`, `:adaptsegnet_seat`, `:advent`, `:advent_seat`. Baselines:
`:source_only` (`--config.mode=adabn` trains it and adapts it: AdaBN) and `:cycada` (translated
images alone). FDA: `:fda_b001`, `:fda_b005`, `:fda_b009` (one model per beta; `_seat` for SEAT
norms); its MBT and self-training rounds: `--config.mode=fda_rounds`.
IntraDA: `:intrada`, `:intrada_seat` (its stage 1; `--config.mode=intrada` runs it, the entropy
ranking and its stage 2, configs/gta_stage2.py with the same row).
The paper's whole pipeline (stage 1, pseudo-labels, stage 2): `--config.mode=pipeline`.
Differential treatment: `:differential`, `:differential_seat`. Toldo et al.: `:clustering_source`
then `:clustering` from it (`:clustering_seat_source`, `:clustering_seat` with SEAT norms).
Mixing-based self-training (docs/mixing-methods.md): `:dacs`, `:daformer_dlv2`,
`:mic_dlv2`, each with `_seat` for SEAT norms (the DAFormer and MIC rows are mmseg's DeepLabV2
on a ResNet-101 V1c: start them from a converted resnet101_v1c, docs/pretrained-weights.md).
DAFormer and MIC as published, on SegFormer (MiT-B5, DAFormer's decoder; docs/segformer.md):
`:daformer`, `:mic`, each with `_seat` for SEAT norms (start from a converted mit_b5).
"""

from seat_jax import presets


def get_config(row: str = "mul"):
  return presets.gta(row)
