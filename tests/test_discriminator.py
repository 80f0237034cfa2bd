"""FCDiscriminator: AdaptSegNet's patch discriminator (REFERENCE 2.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from seat_jax.models import FCDiscriminator

NUM_CLASSES = 19


@pytest.mark.parametrize("in_hw, out_hw", [((512, 1024), (16, 32)), ((720, 1280), (22, 40))])
def test_patch_map_shape(in_hw, out_hw):
  model = FCDiscriminator()
  x = jax.ShapeDtypeStruct((1, *in_hw, NUM_CLASSES), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  out = jax.eval_shape(model.apply, variables, x)
  assert out.shape == (1, *out_hw, 1) and out.dtype == jnp.float32


@pytest.fixture(scope="module")
def params():
  """One real init shared by the tests (jax.random compiles slowly on CPU)."""
  init = jax.jit(FCDiscriminator().init)
  return init(jax.random.key(0), jnp.zeros((1, 64, 64, NUM_CLASSES)))["params"]


def test_param_count_and_init_bounds(params):
  assert set(params) == {"conv1", "conv2", "conv3", "conv4", "classifier"}
  channels = [NUM_CLASSES, 64, 128, 256, 512, 1]
  by_hand = sum(16 * cin * cout + cout for cin, cout in zip(channels[:-1], channels[1:]))
  assert by_hand == 2_781_121  # REFERENCE 1.7: 2.78 M
  assert sum(leaf.size for leaf in jax.tree.leaves(params)) == by_hand
  for name, cin in zip(["conv1", "conv2", "conv3", "conv4", "classifier"], channels):
    bound = 1 / np.sqrt(16 * cin)  # PyTorch default conv init, weights and biases
    for leaf in params[name].values():
      assert np.abs(leaf).max() <= bound
    assert np.abs(params[name]["kernel"]).max() > 0.9 * bound  # uniform, not a narrow normal


def test_matches_torch_reference_with_leaky_relu_0_2(params):
  """Same weights in a torch Sequential (4x4/2 pad 1 convs, LeakyReLU(0.2)) give the same map."""
  x = np.random.default_rng(0).uniform(size=(2, 64, 96, NUM_CLASSES)).astype(np.float32)
  model = FCDiscriminator()
  # Negative activations matter only if the slope is right: make biases push some below zero.
  params = jax.tree.map(lambda p: p * 4.0, params)
  layers = []
  for i, name in enumerate(["conv1", "conv2", "conv3", "conv4", "classifier"]):
    kernel = np.asarray(params[name]["kernel"])
    conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], 4, stride=2, padding=1)
    with torch.no_grad():
      conv.weight.copy_(torch.tensor(kernel.transpose(3, 2, 0, 1)))
      conv.bias.copy_(torch.tensor(np.asarray(params[name]["bias"])))
    layers += [conv] if name == "classifier" else [conv, torch.nn.LeakyReLU(0.2)]
  with torch.no_grad():
    expected = torch.nn.Sequential(*layers)(torch.tensor(x.transpose(0, 3, 1, 2)))
  y = model.apply({"params": params}, jnp.asarray(x))
  np.testing.assert_allclose(y, expected.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
  # A different slope must give a different answer (the comparison above is sensitive to it).
  y_other = FCDiscriminator(negative_slope=0.1).apply({"params": params}, jnp.asarray(x))
  assert np.abs(np.asarray(y_other - y)).max() > 1e-3


def test_rejects_non_nhwc_input():
  with pytest.raises(ValueError, match="NHWC"):
    FCDiscriminator().init(jax.random.key(0), jnp.zeros((64, 64, NUM_CLASSES)))
