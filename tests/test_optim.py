"""Optimiser groups and schedules: hand-computed values and PyTorch's SGD as the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from seat_jax import config_defaults, optim


def _config(**optim_overrides):
  config = config_defaults.get_config()
  config.optim.lr = 0.01
  config.train.lr_horizon_steps = 100
  config.optim.update(optim_overrides)
  return config


def _params():
  return {
      "conv1": {"kernel": jnp.full((2, 2), 1.0)},
      "bn1": {"source_scale": jnp.full((2,), 1.0), "target_scale": jnp.full((2,), 1.0)},
      "main_head": {"branch0": {"kernel": jnp.full((2, 2), 1.0), "bias": jnp.full((2,), 0.5)}},
  }


def test_poly_schedule_values_by_hand():
  schedule = optim.poly_schedule(2.5e-4, 250_000, 0.9)
  for step in (0, 1000, 150_000, 240_000):
    expected = 2.5e-4 * (1 - step / 250_000) ** 0.9
    np.testing.assert_allclose(schedule(step), expected, rtol=1e-5)
  assert float(schedule(250_000)) == 0.0
  # The value AdaptSegNet stops at (REFERENCE 1.6): about 1.10e-4 at 150k.
  np.testing.assert_allclose(schedule(150_000), 1.10e-4, rtol=0.01)


def test_groups_from_patterns():
  groups = optim.param_groups(_params(), (r"^main_head/",), (r"(^|/)bn\d/",))
  assert groups["conv1"]["kernel"] == "backbone"
  assert groups["bn1"]["source_scale"] == "frozen"
  assert groups["main_head"]["branch0"]["bias"] == "head"


def test_heads_get_ten_times_the_lr_and_frozen_params_do_not_move():
  config = _config(weight_decay=0.0, momentum=0.0)
  config.model.bn_affine_trainable = False
  params = _params()
  tx = optim.make_segmenter_tx(config, params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["conv1"]["kernel"], 1.0 - 0.01)
  np.testing.assert_allclose(new["main_head"]["branch0"]["kernel"], 1.0 - 0.1)
  assert np.array_equal(new["bn1"]["source_scale"], params["bn1"]["source_scale"])


def test_weight_decay_only_on_optimised_params():
  config = _config(weight_decay=0.5, momentum=0.0)
  config.optim.frozen_patterns = (r"^bn1/target_scale$",)
  params = _params()
  tx = optim.make_segmenter_tx(config, params)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  # Decay moves the optimised params toward 0 (lr * wd * p) and leaves the frozen one untouched.
  np.testing.assert_allclose(new["bn1"]["source_scale"], 1.0 - 0.01 * 0.5)
  np.testing.assert_allclose(new["main_head"]["branch0"]["bias"], 0.5 - 0.1 * 0.5 * 0.5)
  assert np.array_equal(new["bn1"]["target_scale"], params["bn1"]["target_scale"])


def test_sgd_matches_torch_sgd_with_momentum_decay_and_poly_lr():
  config = _config(weight_decay=5e-4, momentum=0.9)
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(3, 4)).astype(np.float32)
  grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(4)]

  params = {"conv1": {"kernel": jnp.asarray(w0)}}
  tx = optim.make_segmenter_tx(config, params)
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update({"conv1": {"kernel": jnp.asarray(g)}}, state, params)
    params = optax.apply_updates(params, updates)

  w = torch.nn.Parameter(torch.from_numpy(w0.copy()))
  sgd = torch.optim.SGD([w], lr=0.01, momentum=0.9, weight_decay=5e-4)
  for i, g in enumerate(grads):
    sgd.param_groups[0]["lr"] = 0.01 * (1 - i / 100) ** 0.9  # AdaptSegNet's adjust_learning_rate
    w.grad = torch.from_numpy(g)
    sgd.step()
  np.testing.assert_allclose(params["conv1"]["kernel"], w.detach().numpy(), rtol=1e-5, atol=1e-7)


def test_disc_adam_matches_torch_adam():
  config = _config()
  rng = np.random.default_rng(1)
  w0 = rng.normal(size=(5,)).astype(np.float32)
  grads = [rng.normal(size=(5,)).astype(np.float32) for _ in range(3)]
  tx = optim.make_disc_tx(config)
  params = jnp.asarray(w0)
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
  w = torch.nn.Parameter(torch.from_numpy(w0.copy()))
  adam = torch.optim.Adam([w], lr=1e-4, betas=(0.9, 0.99))
  for i, g in enumerate(grads):
    adam.param_groups[0]["lr"] = 1e-4 * (1 - i / 100) ** 0.9
    w.grad = torch.from_numpy(g)
    adam.step()
  np.testing.assert_allclose(params, w.detach().numpy(), rtol=1e-5, atol=1e-8)


def test_linear_warmup_follows_mmcv_over_the_poly_schedule():
  config = _config(warmup_steps=10, poly_power=1.0)
  schedules = optim.segmenter_lr_schedules(config)
  for step in (0, 5, 10, 50):
    poly = 0.01 * (1 - step / 100)
    factor = 1 - (1 - min(step / 10, 1.0)) * (1 - 1e-6)  # mmcv 'linear', warmup_ratio 1e-6
    np.testing.assert_allclose(schedules["backbone"](step), poly * factor, rtol=1e-5)
    np.testing.assert_allclose(schedules["head"](step), 10 * poly * factor, rtol=1e-5)


def test_adamw_matches_torch_adamw_with_ten_times_the_head_lr():
  config = _config(name="adamw", lr=0.01, weight_decay=0.05, poly_power=1.0)
  params = {"conv1": {"kernel": jnp.asarray([[0.5, -1.0], [2.0, 0.1]])},
            "main_head": {"branch0": {"bias": jnp.asarray([0.3, -0.7])}}}
  grads = [{"conv1": {"kernel": jnp.asarray([[0.2, -0.4], [1.0, 0.0]])},
            "main_head": {"branch0": {"bias": jnp.asarray([-0.5, 0.25])}}},
           {"conv1": {"kernel": jnp.asarray([[-0.1, 0.3], [0.5, 2.0]])},
            "main_head": {"branch0": {"bias": jnp.asarray([0.1, 0.2])}}}]
  tx = optim.make_segmenter_tx(config, params)
  state, current = tx.init(params), params
  for g in grads:
    updates, state = tx.update(g, state, current)
    current = optax.apply_updates(current, updates)
  # torch: one AdamW per group, lr following the poly schedule (LambdaLR), betas 0.9/0.999.
  torch_params = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in (
      ("kernel", params["conv1"]["kernel"]), ("bias", params["main_head"]["branch0"]["bias"]))}
  opt = torch.optim.AdamW([{"params": [torch_params["kernel"]], "lr": 0.01},
                           {"params": [torch_params["bias"]], "lr": 0.1}],
                          betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / 100)
  for g in grads:
    torch_params["kernel"].grad = torch.tensor(np.asarray(g["conv1"]["kernel"]))
    torch_params["bias"].grad = torch.tensor(np.asarray(g["main_head"]["branch0"]["bias"]))
    opt.step()
    sched.step()
  np.testing.assert_allclose(current["conv1"]["kernel"], torch_params["kernel"].detach().numpy(),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(current["main_head"]["branch0"]["bias"],
                             torch_params["bias"].detach().numpy(), rtol=1e-5, atol=1e-7)
