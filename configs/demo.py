"""The CPU demo: a tiny segmenter on the built-in synthetic_streets domain shift.

`--config=configs/demo.py` trains SEAT (multi-level); `:shared` trains the source-only baseline
(plain BN, no adversary) and `:sat` the shared-affine variant. `make demo` runs all three.
`:intrada`, `:intrada_seat` (+ `_stage2`) are IntraDA's two stages on the same data and budget.
`:fda_b001`, `:fda_b005`, `:fda_b009` (+ `_seat`) are FDA's models on them (`--config.mode=fda_rounds`).
`:differential`, `:clustering_source` / `:clustering`, `:dacs`, `:daformer`, `:mic` (each + `_seat`)
are the other compared methods at the demo's scale (benchmarks/compared_methods.py runs them all).
`:mit_pretrain`, `:mit_source_only`, `:daformer_mit[_sat|_seat]`, `:mic_mit[_seat]` are DAFormer
and MIC on a tiny MiT (SegFormer) from its own pretrained init (`mit_pretrain`).
"""

from seat_jax import presets


def get_config(row: str = "seat"):
  return presets.demo_row(row)
