"""The `gta5` builder; importing `gta5_dataset_builder` registers it with TFDS."""
