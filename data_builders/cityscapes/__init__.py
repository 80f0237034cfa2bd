"""The `cityscapes` builder; importing `cityscapes_dataset_builder` registers it with TFDS."""
