"""The `synthetic_streets` builder; importing `synthetic_streets_dataset_builder` registers it with TFDS."""
