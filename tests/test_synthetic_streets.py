"""synthetic_streets: determinism, shared layout distribution, stated pixel shift, round trip."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_builders.synthetic_streets import synthetic_streets_dataset_builder as streets
from seat_jax import datasets

NUM_STATS = 100  # images per domain for the distribution checks (at the default 128x256)


@pytest.fixture(scope="module")
def domain_samples():
  """Per domain: (pixels [N*H*W, 3] float64, class frequencies over the 19 train ids)."""
  out = {}
  for domain in streets.DOMAINS:
    images, label_maps = zip(*(streets.generate_example(0, domain, "train", i)
                               for i in range(NUM_STATS)))
    pixels = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float64)
    ids = np.concatenate([lab.ravel() for lab in label_maps])
    out[domain] = (pixels, np.bincount(ids, minlength=256)[:19] / ids.size)
  return out


def test_same_seed_same_bytes_other_seed_other_scene():
  image_a, label_a = streets.generate_example(3, "target", "train", 7, (64, 128))
  image_b, label_b = streets.generate_example(3, "target", "train", 7, (64, 128))
  assert image_a.tobytes() == image_b.tobytes() and label_a.tobytes() == label_b.tobytes()
  image_c, label_c = streets.generate_example(4, "target", "train", 7, (64, 128))
  assert not np.array_equal(label_a, label_c) and not np.array_equal(image_a, image_c)
  # Domains and splits use independent streams: not the same layout under another rendering.
  assert not np.array_equal(streets.generate_example(3, "source", "train", 7, (64, 128))[1],
                            label_a)
  assert not np.array_equal(streets.generate_example(3, "target", "validation", 7, (64, 128))[1],
                            label_a)


def test_labels_are_scene_classes_and_all_occur(domain_samples):
  for domain in streets.DOMAINS:
    freq = domain_samples[domain][1]
    assert set(np.flatnonzero(freq)) == set(streets.SCENE_CLASSES)
    # Small classes are present in a visible amount (at least 0.05% of the pixels).
    assert freq[list(streets.SCENE_CLASSES)].min() > 5e-4


def test_domains_share_label_distribution(domain_samples):
  source, target = domain_samples["source"][1], domain_samples["target"][1]
  assert np.abs(source - target).max() < 0.03


def test_domains_differ_in_pixel_statistics(domain_samples):
  source, target = domain_samples["source"][0], domain_samples["target"][0]
  mean_gap = np.abs(source.mean(0) - target.mean(0))
  assert (mean_gap >= 15).all(), mean_gap
  std_ratio = target.std(0) / source.std(0)
  assert (std_ratio <= 0.8).all(), std_ratio


def test_the_pretrain_style_is_neither_source_nor_target(domain_samples):
  """The demo's pretraining domain: same scenes and classes, a third rendering whose channel
  means differ from both other domains' by at least 15 grey levels in every channel."""
  pretrain = domain_samples["pretrain"]
  for other in ("source", "target"):
    gap = np.abs(pretrain[0].mean(0) - domain_samples[other][0].mean(0))
    assert (gap >= 15).all(), (other, gap)
    assert np.abs(pretrain[1] - domain_samples[other][1]).max() < 0.03


def test_source_is_flat_and_target_is_noisy():
  # Two renderings of one layout: the same canvas drawn in each domain's style.
  canvas = streets.draw_layout(np.random.default_rng(0), (64, 128))
  sky = canvas.label == streets.SKY
  source = streets.render(canvas, "source", np.random.default_rng(1)).astype(np.float64)
  target = streets.render(canvas, "target", np.random.default_rng(1)).astype(np.float64)
  # Within a row the source sky is exactly flat (only a vertical gradient); the target's sky
  # carries sensor noise.
  rows = [r for r in range(64) if sky[r].sum() >= 10]
  assert rows
  for r in rows:
    assert source[r][sky[r]].std(axis=0).max() == 0
    assert target[r][sky[r]].std(axis=0).min() > 2
  with pytest.raises(ValueError, match="domain must be one of"):
    streets.render(canvas, "night", np.random.default_rng(1))


@pytest.fixture(scope="module")
def tiny_config():
  return streets.SyntheticStreetsConfig(name="tiny_target", domain="target", seed=5,
                                        image_hw=(32, 64), num_train=4, num_validation=2)


def test_build_and_read_back(tmp_path, tiny_config):
  builder = datasets.get_builder("synthetic_streets", str(tmp_path), tiny_config)  # builds
  assert builder.info.splits["train"].num_examples == 4
  assert builder.info.splits["validation"].num_examples == 2
  source = tfds.data_source("synthetic_streets/tiny_target", split="validation",
                            data_dir=str(tmp_path), download=False)
  examples = {source[i]["id"]: source[i] for i in range(len(source))}
  key = next(k for k in examples if (k.decode() if isinstance(k, bytes) else k).endswith("00001"))
  image, label = streets.generate_example(5, "target", "validation", 1, (32, 64))
  np.testing.assert_array_equal(examples[key]["image"], image)
  np.testing.assert_array_equal(examples[key]["label"][..., 0], label)
  assert builder.info.metadata["domain"] == "target"


def test_builder_configs_and_same_bytes_from_generator(tmp_path, tiny_config):
  configs = {c.name: c for c in streets.Builder.BUILDER_CONFIGS}
  assert set(configs) == {"source", "target", "pretrain"}
  assert configs["source"].image_hw == (128, 256)
  assert (configs["source"].num_train, configs["source"].num_validation) == (200, 50)
  builder = streets.Builder(config=tiny_config, data_dir=str(tmp_path))
  first = dict(builder._generate_examples("train", 2))
  second = dict(builder._generate_examples("train", 2))
  assert first.keys() == {"target_train_00000", "target_train_00001"}
  for key in first:
    assert first[key]["image"] == second[key]["image"]  # encoded PNG bytes
    assert first[key]["label"] == second[key]["label"]
