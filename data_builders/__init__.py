"""TFDS builders of the seat_jax datasets, one package each, and what they share (`common`).

Builders: `gta5`, `synthia`, `cityscapes` (manual downloads, read from `--manual_dir`) and
`synthetic_streets` (generated). Each lives in `data_builders/<name>/<name>_dataset_builder.py`
as class `Builder`; importing that module registers it with TFDS. `seat_jax.datasets` is the
registry that knows them; build them with `python -m seat_jax.prepare_data <name> ...` (no
TensorFlow or apache-beam needed).
"""
