"""The `synthia` builder; importing `synthia_dataset_builder` registers it with TFDS."""
