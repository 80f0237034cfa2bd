"""SeatNorm: per-domain statistics/affine with PyTorch BatchNorm semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from seat_jax.models import SeatNorm

EPS = 1e-5
SHAPE = (2, 4, 5, 3)  # N, H, W, C: 40 values per channel


@pytest.fixture(scope="module")
def x():
  rng = np.random.default_rng(0)
  return (rng.normal(size=SHAPE) * np.array([1.0, 2.0, 0.5]) + np.array([0.3, -1.0, 2.0])
          ).astype(np.float32)


def _randomised(variables, seed):
  """Every leaf replaced by distinct random values (vars positive), so slots are told apart."""
  rng = np.random.default_rng(seed)
  def fill(path, leaf):
    name = path[-1].key
    values = rng.uniform(0.5, 2.0, leaf.shape) if name.endswith("var") else rng.normal(
        size=leaf.shape)
    return jnp.asarray(values, jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, variables)


def _init(mode, x, seed=1, **kwargs):
  norm = SeatNorm(mode=mode, **kwargs)
  variables = norm.init(jax.random.key(0), jnp.asarray(x))
  return norm, _randomised(variables, seed)


def _numpy_bn(x, mean, var, scale, bias):
  return (x - mean) / np.sqrt(var + EPS) * scale + bias


def _train(norm, variables, x, domain):
  return norm.apply(variables, jnp.asarray(x), domain, True, mutable=["batch_stats"])


def _source_loss_grads(norm, variables, x):
  weights = jnp.asarray(np.random.default_rng(5).normal(size=x.shape), jnp.float32)
  def loss(params):
    y, _ = _train(norm, {**variables, "params": params}, x, "source")
    return jnp.sum(y * weights)
  return jax.grad(loss)(variables["params"])


@pytest.mark.parametrize("mode, params, stats", [
    ("shared", {"scale", "bias"}, {"mean", "var"}),
    ("sat", {"scale", "bias"}, {"source_mean", "source_var", "target_mean", "target_var"}),
    ("seat", {"source_scale", "source_bias", "target_scale", "target_bias"},
     {"source_mean", "source_var", "target_mean", "target_var"}),
])
def test_variable_names_and_init(mode, params, stats, x):
  variables = SeatNorm(mode=mode).init(jax.random.key(0), jnp.asarray(x))
  assert set(variables["params"]) == params
  assert set(variables["batch_stats"]) == stats
  for name, value in {**variables["params"], **variables["batch_stats"]}.items():
    expected = 1.0 if name.endswith(("scale", "var")) else 0.0
    np.testing.assert_array_equal(value, np.full(3, expected, np.float32))
    assert value.dtype == jnp.float32


def test_source_train_updates_only_source_stats_by_pytorch_rule(x):
  norm, variables = _init("seat", x)
  y, updates = _train(norm, variables, x, "source")
  old, new = variables["batch_stats"], updates["batch_stats"]
  for name in ("target_mean", "target_var"):
    assert np.array_equal(np.asarray(new[name]), np.asarray(old[name]))  # bit-identical
  mean = x.mean(axis=(0, 1, 2))
  np.testing.assert_allclose(new["source_mean"], 0.9 * old["source_mean"] + 0.1 * mean, rtol=1e-6)
  unbiased = x.var(axis=(0, 1, 2), ddof=1)
  np.testing.assert_allclose(new["source_var"], 0.9 * old["source_var"] + 0.1 * unbiased,
                             rtol=1e-6)
  # The batch is normalised with its biased variance and the source affine.
  p = variables["params"]
  expected = _numpy_bn(x, mean, x.var(axis=(0, 1, 2)), p["source_scale"], p["source_bias"])
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_eval_uses_the_chosen_domains_stats_and_affine(x):
  norm, variables = _init("seat", x)
  s, p = variables["batch_stats"], variables["params"]
  for domain in ("source", "target"):
    y = norm.apply(variables, jnp.asarray(x), domain, False)
    expected = _numpy_bn(x, s[f"{domain}_mean"], s[f"{domain}_var"], p[f"{domain}_scale"],
                         p[f"{domain}_bias"])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_sat_eval_uses_domain_stats_with_the_shared_affine(x):
  norm, variables = _init("sat", x)
  s, p = variables["batch_stats"], variables["params"]
  y = norm.apply(variables, jnp.asarray(x), "source", False)
  np.testing.assert_allclose(
      y, _numpy_bn(x, s["source_mean"], s["source_var"], p["scale"], p["bias"]), rtol=1e-5,
      atol=1e-5)


def test_seat_source_loss_gives_zero_target_affine_grads(x):
  norm, variables = _init("seat", x)
  grads = _source_loss_grads(norm, variables, x)
  for name in ("target_scale", "target_bias"):
    assert np.all(np.asarray(grads[name]) == 0.0)
  for name in ("source_scale", "source_bias"):
    assert np.all(np.abs(np.asarray(grads[name])) > 0.0)


def test_sat_shared_affine_gets_the_gradient(x):
  norm, variables = _init("sat", x)
  grads = _source_loss_grads(norm, variables, x)
  assert set(grads) == {"scale", "bias"}
  for value in grads.values():
    assert np.all(np.abs(np.asarray(value)) > 0.0)


def test_frozen_affine_has_exactly_zero_grads(x):
  norm, variables = _init("seat", x, affine_trainable=False)
  grads = _source_loss_grads(norm, variables, x)
  for value in grads.values():
    assert np.all(np.asarray(value) == 0.0)
  # The input still gets a gradient, so only the affine is frozen.
  dx = jax.grad(lambda v: jnp.sum(_train(norm, variables, v, "source")[0] ** 3))(jnp.asarray(x))
  assert np.any(np.abs(np.asarray(dx)) > 0.0)


def test_shared_mode_has_one_stats_set_updated_by_both_domains(x):
  norm, variables = _init("shared", x)
  x_target = x * 2.0 + 1.0
  _, after_source = _train(norm, variables, x, "source")
  _, after_both = _train(norm, {**variables, **after_source}, x_target, "target")
  old = variables["batch_stats"]
  mean_s, mean_t = x.mean(axis=(0, 1, 2)), x_target.mean(axis=(0, 1, 2))
  var_s, var_t = x.var(axis=(0, 1, 2), ddof=1), x_target.var(axis=(0, 1, 2), ddof=1)
  # AdaptSegNet's mixing (REFERENCE 1.3): 0.81 old + 0.09 source + 0.1 target.
  np.testing.assert_allclose(after_both["batch_stats"]["mean"],
                             0.81 * old["mean"] + 0.09 * mean_s + 0.1 * mean_t, rtol=1e-5)
  np.testing.assert_allclose(after_both["batch_stats"]["var"],
                             0.81 * old["var"] + 0.09 * var_s + 0.1 * var_t, rtol=1e-5)


def test_frozen_stats_in_train_use_running_stats_without_update(x):
  norm, variables = _init("seat", x, use_batch_stats_in_train=False)
  y_train, updates = _train(norm, variables, x, "target")
  y_eval = norm.apply(variables, jnp.asarray(x), "target", False)
  np.testing.assert_array_equal(y_train, y_eval)
  for name, value in variables["batch_stats"].items():
    np.testing.assert_array_equal(updates["batch_stats"][name], value)


def test_bfloat16_input_keeps_float32_stats(x):
  norm, variables = _init("seat", x)
  x_bf16 = jnp.asarray(x, jnp.bfloat16)
  y, updates = _train(norm, variables, x_bf16, "source")
  assert y.dtype == jnp.bfloat16
  stats = updates["batch_stats"]
  assert all(v.dtype == jnp.float32 for v in stats.values())
  # Statistics come from the bf16 values, computed in float32 (not rounded to bf16).
  x_rounded = np.asarray(x_bf16.astype(jnp.float32))
  expected = 0.9 * variables["batch_stats"]["source_mean"] + 0.1 * x_rounded.mean(axis=(0, 1, 2))
  np.testing.assert_allclose(stats["source_mean"], expected, rtol=1e-6)


def test_matches_torch_batchnorm_train_forward_grads_and_eval(x):
  """An independent reference: torch.nn.BatchNorm2d (train output, input/affine grads, stats)."""
  norm, variables = _init("seat", x)
  p, s = variables["params"], variables["batch_stats"]
  bn = torch.nn.BatchNorm2d(3, eps=EPS, momentum=0.1)
  with torch.no_grad():
    bn.weight.copy_(torch.tensor(np.asarray(p["target_scale"])))
    bn.bias.copy_(torch.tensor(np.asarray(p["target_bias"])))
    bn.running_mean.copy_(torch.tensor(np.asarray(s["target_mean"])))
    bn.running_var.copy_(torch.tensor(np.asarray(s["target_var"])))
  weights = np.random.default_rng(7).normal(size=x.shape).astype(np.float32)
  xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  (torch.sum(bn(xt) * torch.tensor(weights.transpose(0, 3, 1, 2)))).backward()

  def loss(params, inputs):
    y, updates = _train(norm, {**variables, "params": params}, inputs, "target")
    return jnp.sum(y * weights), updates
  (_, updates), (g_params, g_x) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      variables["params"], jnp.asarray(x))
  np.testing.assert_allclose(g_x, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(g_params["target_scale"], bn.weight.grad.numpy(), rtol=1e-4)
  np.testing.assert_allclose(g_params["target_bias"], bn.bias.grad.numpy(), rtol=1e-4)
  np.testing.assert_allclose(updates["batch_stats"]["target_mean"], bn.running_mean.numpy(),
                             rtol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["target_var"], bn.running_var.numpy(),
                             rtol=1e-5)
  bn.eval()
  with torch.no_grad():
    expected = bn(torch.tensor(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  y = norm.apply({**variables, **updates}, jnp.asarray(x), "target", False)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_bad_domain_and_mode_are_named(x):
  norm, variables = _init("seat", x)
  with pytest.raises(ValueError, match="domain must be one of.*'src'"):
    norm.apply(variables, jnp.asarray(x), "src", False)
  with pytest.raises(ValueError, match="model.norm_mode.*'dsbn'"):
    SeatNorm(mode="dsbn").init(jax.random.key(0), jnp.asarray(x))


@pytest.mark.parametrize("mode", ["shared", "sat", "seat"])
def test_mixed_images_use_batch_moments_and_the_mean_affine_without_updates(x, mode):
  norm, variables = _init(mode, x)
  y, updates = _train(norm, variables, x, "mixed")
  p = variables["params"]
  if mode == "seat":
    scale = (np.asarray(p["source_scale"]) + np.asarray(p["target_scale"])) / 2
    bias = (np.asarray(p["source_bias"]) + np.asarray(p["target_bias"])) / 2
  else:
    scale, bias = np.asarray(p["scale"]), np.asarray(p["bias"])
  x64 = x.astype(np.float64)
  expected = _numpy_bn(x64, x64.mean((0, 1, 2)), x64.var((0, 1, 2)), scale, bias)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  for name, value in updates["batch_stats"].items():  # no domain's statistics move
    np.testing.assert_array_equal(value, variables["batch_stats"][name])
  with pytest.raises(ValueError, match="training only"):
    norm.apply(variables, jnp.asarray(x), "mixed", False)


def _interleaved(source, target):
  """source 0, target 0, source 1, target 1, ... (seat_norm.JOINT's batch order)."""
  return jnp.stack([source, target], axis=1).reshape(-1, *source.shape[1:])


@pytest.mark.parametrize("mode", ["shared", "sat", "seat"])
@pytest.mark.parametrize("train, batch_stats", [(True, True), (True, False), (False, True)])
def test_joint_batch_equals_a_source_call_then_a_target_call(x, mode, train, batch_stats):
  """The training step's one pass over both domains gives the two passes' outputs, gradients
  (input and every affine slot) and running statistics, updated in the same order."""
  norm, variables = _init(mode, x, use_batch_stats_in_train=batch_stats)
  x_target = x[::-1] * 2.0 + 1.0  # other moments, so the halves' statistics differ
  weights = np.random.default_rng(3).normal(size=(4,) + x.shape[1:]).astype(np.float32)
  mutable = ["batch_stats"] if train else False

  def call(params, stats, inputs, domain):
    out = norm.apply({"params": params, "batch_stats": stats}, inputs, domain, train,
                     mutable=mutable)
    return out if train else (out, {"batch_stats": stats})

  def two_calls(params, xs, xt):
    ys, s = call(params, variables["batch_stats"], xs, "source")
    yt, s = call(params, s["batch_stats"], xt, "target")
    y = _interleaved(ys, yt)
    return jnp.sum(y * weights), (y, s["batch_stats"])

  def joint(params, xs, xt):
    y, s = call(params, variables["batch_stats"], _interleaved(xs, xt), "source+target")
    return jnp.sum(y * weights), (y, s["batch_stats"])

  grad = lambda f: jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(
      variables["params"], jnp.asarray(x), jnp.asarray(x_target))
  (_, (y_two, stats_two)), grads_two = grad(two_calls)
  (_, (y_joint, stats_joint)), grads_joint = grad(joint)
  # float32 reductions over 40 values in another order: a few eps of the largest magnitude.
  np.testing.assert_allclose(y_joint, y_two, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_joint), jax.tree.leaves(grads_two)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  for name, value in stats_two.items():
    np.testing.assert_allclose(stats_joint[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
  if train and batch_stats:  # the statistics moved (the comparison above is not vacuous)
    assert any(np.any(stats_two[n] != variables["batch_stats"][n]) for n in stats_two)


def test_joint_batch_needs_pairs(x):
  norm, variables = _init("seat", x)
  with pytest.raises(ValueError, match="in pairs; got a batch of 3"):
    norm.apply(variables, jnp.asarray(x[:1]).repeat(3, 0), "source+target", True,
               mutable=["batch_stats"])
