"""Losses against PyTorch's own implementations and hand computations."""

import jax.numpy as jnp
import numpy as np
import torch

from seat_jax import losses


def test_cross_entropy_matches_torch_with_ignore_index():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7, 4)).astype(np.float32) * 3
  labels = rng.integers(0, 4, size=(2, 5, 7))
  labels[rng.random(labels.shape) < 0.3] = 255
  expected = torch.nn.functional.cross_entropy(
      torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(labels), ignore_index=255)
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got, expected.item(), rtol=1e-5)


def test_cross_entropy_all_ignored_is_zero_not_nan():
  got = losses.cross_entropy(jnp.zeros((1, 2, 2, 3)), jnp.full((1, 2, 2), 255))
  assert float(got) == 0.0


def test_bce_matches_torch_for_both_domain_labels():
  logits = np.array([[-30.0, -2.0], [0.0, 3.5]], np.float32)
  for target in (losses.SOURCE_DOMAIN_LABEL, losses.TARGET_DOMAIN_LABEL):
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(logits), torch.full((2, 2), target))
    np.testing.assert_allclose(losses.bce_with_logits(jnp.asarray(logits), target),
                               expected.item(), rtol=1e-6)


def test_entropy_uniform_is_one_and_one_hot_is_zero():
  uniform = jnp.full((1, 3, 3, 19), 1 / 19)
  one_hot = jnp.zeros((1, 3, 3, 19)).at[..., 4].set(1.0)
  np.testing.assert_allclose(losses.entropy_loss(uniform), 1.0, rtol=1e-6)
  np.testing.assert_allclose(losses.entropy_loss(one_hot), 0.0, atol=1e-6)


def test_self_information_by_hand():
  p = jnp.array([[[[0.5, 0.25, 0.25]]]])
  expected = np.array([0.5 * 1, 0.25 * 2, 0.25 * 2]) / np.log2(3)
  np.testing.assert_allclose(losses.self_information(p)[0, 0, 0], expected, rtol=1e-6)
