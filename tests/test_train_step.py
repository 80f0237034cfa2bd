"""The jitted adversarial step on a tiny model with fixed fake batches (no input pipeline).

Loss weights are runtime values of the step, so one compiled step per adversarial mode serves
every weight setting below.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from seat_jax import adversary
from seat_jax import optim
from seat_jax import presets
from seat_jax import train_step


def _config(mode="multi_level_sum", adv_input="softmax", target_labels=False, joint_pass=False):
  config = presets.demo("seat")
  config.train.joint_pass = joint_pass
  if target_labels:  # stage 2: the step is built with the target CE
    config.data.target.pseudo_label_dir = "/pseudo_labels"
  config.model.num_classes = 5
  config.adv.mode = mode
  config.adv.input = adv_input
  config.adv.weight = 0.5  # large, so the adversarial gradient is clearly visible
  config.optim.weight_decay = 0.0
  config.train.batch_size = 2
  return config


@functools.lru_cache(maxsize=None)
def _compiled(mode, adv_input="softmax", target_labels=False, joint_pass=False):
  """(initial state, jitted step, default weights) for one adversarial mode."""
  config = _config(mode, adv_input, target_labels, joint_pass)
  trainer = train_step.build_trainer(config)
  step = train_step.make_train_step(trainer.model, trainer.disc, trainer.tx, trainer.disc_tx,
                               trainer.opts, optim.lr_schedules(config))
  return train_step.create_state(trainer, 0), jax.jit(step), train_step.loss_weights(config)


def _run(mode="multi_level_sum", batch=None, adv_input="softmax", target_labels=False,
         joint_pass=False, **weights):
  state, step, default = _compiled(mode, adv_input, target_labels, joint_pass)
  w = {**default, **{k: jnp.float32(v) for k, v in weights.items()}}
  new_state, metrics = step(state, batch if batch is not None else helpers.fake_step_batch(), w)
  return state, new_state, metrics


def _changed(a, b):
  return jax.tree.map(lambda x, y: bool(jnp.any(x != y)), a, b)


def test_step_moves_segmenter_and_discriminator():
  before, after, metrics = _run()
  assert int(after.step) == 1
  assert all(np.isfinite(float(v)) for v in metrics.values())
  np.testing.assert_allclose(metrics["lr"], 1e-2)  # the demo preset's lr, at step 0
  np.testing.assert_allclose(metrics["lr_head"], 1e-1)  # heads: 10x
  np.testing.assert_allclose(metrics["disc_lr"], 1e-4)
  assert any(jax.tree.leaves(_changed(before.params, after.params)))
  assert all(jax.tree.leaves(_changed(before.disc_params, after.disc_params)))
  bn = _changed(before.params["bn1"], after.params["bn1"])
  assert bn["source_scale"] and bn["target_scale"]  # SEAT moves both domains' affines


def test_each_domain_affine_moves_only_through_its_own_pass():
  # No adversarial gradient and no target loss: nothing flows into the target affine.
  before, after, _ = _run(adv_weight=0.0)
  changed = _changed(before.params["layer1"]["block0"]["bn2"], after.params["layer1"]["block0"]["bn2"])
  assert changed["source_scale"] and not changed["target_scale"] and not changed["target_bias"]
  # Every source pixel ignored: only the adversarial (target) pass moves the affines.
  batch = helpers.fake_step_batch()
  batch["source_label"] = jnp.full_like(batch["source_label"], 255)
  before, after, _ = _run(batch=batch)
  changed = _changed(before.params["layer1"]["block0"]["bn2"], after.params["layer1"]["block0"]["bn2"])
  assert changed["target_scale"] and not changed["source_scale"] and not changed["source_bias"]


def test_discriminator_update_does_not_depend_on_the_segmenter_loss():
  # D learns from stop_gradient maps of the pre-update segmenter: G-side weights cannot move it.
  _, a, _ = _run(adv_weight=0.5, aux_weight=0.1)
  _, b, _ = _run(adv_weight=0.0, aux_weight=3.0)
  jax.tree.map(np.testing.assert_array_equal, a.disc_params, b.disc_params)
  assert any(jax.tree.leaves(_changed(a.params, b.params)))


def test_segmenter_update_does_not_depend_on_the_discriminator_update():
  # With no adversarial weight the segmenter moves exactly as in the source-only step,
  # although here the discriminator is being trained alongside.
  _, with_disc, _ = _run("multi_level_sum", adv_weight=0.0)
  _, source_only, metrics = _run("none")
  jax.tree.map(np.testing.assert_array_equal, with_disc.params, source_only.params)
  assert not any(k.startswith("d_") for k in metrics)


def test_adversarial_gradient_reaches_the_segmenter():
  _, with_adv, _ = _run(adv_weight=0.5)
  _, without_adv, _ = _run(adv_weight=0.0)
  assert any(jax.tree.leaves(_changed(with_adv.params["main_head"], without_adv.params["main_head"])))


def test_multi_level_with_lambda_zero_equals_single_level():
  _, multi, m_metrics = _run("multi_level_sum", multi_level_lambda=0.0)
  _, single, s_metrics = _run("single")
  jax.tree.map(np.testing.assert_array_equal, multi.params, single.params)
  jax.tree.map(np.testing.assert_array_equal, multi.disc_params, single.disc_params)
  assert float(m_metrics["loss"]) == float(s_metrics["loss"])
  _, fused, _ = _run("multi_level_sum", multi_level_lambda=0.5)
  assert any(jax.tree.leaves(_changed(multi.disc_params, fused.disc_params)))


def test_two_discriminators_with_entropy_input():
  _, after, metrics = _run("two_discriminators", adv_input="entropy")
  assert set(after.disc_params) == {"main", "aux"}
  assert {"adv_main", "adv_aux", "d_aux_source", "d_main_target"} <= set(metrics)


def test_pseudo_labels_add_a_target_cross_entropy():
  batch = helpers.fake_step_batch()
  batch["target_label"] = batch["source_label"]
  _, a, metrics = _run(batch=batch, target_labels=True, target_ce_weight=1.0)
  _, b, _ = _run(batch=batch, target_labels=True, target_ce_weight=0.0)
  assert float(metrics["target_seg_main"]) > 0
  assert any(jax.tree.leaves(_changed(a.params, b.params)))


def test_discriminator_input_fuses_softmax_maps():
  main = jnp.array([[[[0.0, 1.0]]]])
  aux = jnp.array([[[[2.0, 0.0]]]])
  opts = train_step.StepOptions(adv_mode="multi_level_sum", adv_input="softmax")
  got = adversary.discriminator_input("main", main, aux, opts, 0.05)
  expected = jax.nn.softmax(main) + 0.05 * jax.nn.softmax(aux)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_one_joint_pass_gives_the_two_passes_step():
  """train.joint_pass (source and target interleaved in one segmenter pass) against the
  references' order, a source pass then a target pass: the same update, statistics and
  discriminator losses. Tolerance: float32 sums in another order, amplified through the tiny net's
  norms (measured 2e-6 of the largest update); swapping the domains' halves moves it by ~1."""
  before, joint, joint_metrics = _run(joint_pass=True)
  _, two, two_metrics = _run()
  update = lambda after: jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b),
                                      after.params, before.params)
  largest = max(float(np.abs(u).max()) for u in jax.tree.leaves(update(two)))
  for a, b in zip(jax.tree.leaves(update(joint)), jax.tree.leaves(update(two))):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * largest)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               joint.batch_stats, two.batch_stats)
  # (The discriminator through its losses and gradient: Adam's first step, lr * g / |g|, turns
  # float noise in a near-zero gradient element into a whole step.)
  for name in ("seg_main", "seg_aux", "adv_main", "entropy", "d_main_source", "d_main_target",
               "disc_grad_norm"):
    np.testing.assert_allclose(joint_metrics[name], two_metrics[name], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("row, joint", [
    ("mul", True), ("advent", True), ("fda_b001", True), ("clustering", True),
    ("dacs", False), ("mic_dlv2", False), ("daformer", False)])
def test_joint_pass_only_where_it_gives_the_two_passes_numbers(row, joint):
  """Methods that run passes between the source and the target pass (DACS's mixed, MIC's
  masked) and SegFormer (dropout drawn per pass) keep the two passes; off by default."""
  config = presets.gta(row)
  assert not train_step.StepOptions.from_config(config).joint_pass
  config.train.joint_pass = True
  assert train_step.StepOptions.from_config(config).joint_pass is joint
