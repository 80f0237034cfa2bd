"""The compared methods inside the one train step: the mean teacher, the mixed images' norm,
the feature-space losses, and a mixing run that resumes exactly.

The methods' own computations are tested against independent references in test_mixing.py,
test_differential.py and test_clustering.py; here: that the step wires them as documented.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from seat_jax import checkpointing
from seat_jax import errors
from seat_jax import models
from seat_jax import optim
from seat_jax import train
from seat_jax import train_step


def _config(**overrides):
  return helpers.step_config({k.replace("__", "."): v for k, v in overrides.items()})


@functools.lru_cache(maxsize=None)
def _compiled(**overrides):
  config = _config(**overrides)
  trainer = train_step.build_trainer(config)
  step = train_step.make_train_step(trainer.model, trainer.disc, trainer.tx, trainer.disc_tx,
                                    trainer.opts, optim.lr_schedules(config))
  return train_step.create_state(trainer, 0), jax.jit(step), train_step.loss_weights(config)


def _run(state, step, weights, steps=1, num_classes=5):
  states = [state]
  for i in range(steps):
    state, metrics = step(state, helpers.fake_step_batch(seed=i, num_classes=num_classes), weights)
    states.append(state)
  return states, metrics


def _max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))


MIX = dict(mix__enabled=True, mix__mic_weight=1.0, mix__mic_block=8)


def test_teacher_is_the_dacs_ema_of_the_student():
  state, step, weights = _compiled(**MIX)
  teacher0 = state.method_state["teacher"]
  assert _max_diff(teacher0, state.model_variables()) == 0.0  # starts as a copy
  (s0, s1, s2), metrics = _run(state, step, weights, steps=2)
  assert {"mix_main", "mic_main", "pseudo_weight"} <= set(metrics)
  # DACS: alpha_t = min(1 - 1 / (t + 1), alpha): 0 at step 0 (teacher = student), 0.5 at step 1.
  assert _max_diff(s1.method_state["teacher"], s1.model_variables()) == 0.0
  expected = jax.tree.map(lambda t, s: 0.5 * t + 0.5 * s, s1.method_state["teacher"],
                          s2.model_variables())
  assert _max_diff(s2.method_state["teacher"], expected) < 1e-6
  assert _max_diff(s2.method_state["teacher"], s2.model_variables()) > 0


def _domain_stats(batch_stats, domain):
  flat = jax.tree_util.tree_flatten_with_path(batch_stats)[0]
  return [leaf for path, leaf in flat if path[-1].key.startswith(domain)]


@pytest.mark.parametrize("norm", ["target", "source", "batch"])
def test_mixed_image_norm_choice_decides_which_statistics_move(norm):
  state, step, weights = _compiled(mix__enabled=True, mix__norm=norm)
  (s0, s1), _ = _run(state, step, weights)
  moved = {d: _max_diff(_domain_stats(s0.batch_stats, d), _domain_stats(s1.batch_stats, d)) > 0
           for d in ("source", "target")}
  # Source images always move the source statistics; the target statistics move through the
  # mixed images (norm=target) or through the gradient-free target pass the step adds so that
  # evaluation never meets stale target statistics (source, batch).
  assert moved == {"source": True, "target": True}
  if norm == "source":
    # Two source-norm passes (source images, mixed images) and a target-norm pass of clean
    # target images: the target statistics are the clean target batch's.
    config = _config(mix__enabled=True, mix__norm=norm)
    trainer = train_step.build_trainer(config)
    _, updated = trainer.model.apply(
        {"params": s0.params, "batch_stats": s0.batch_stats},
        helpers.fake_step_batch()["target_image"],
        domain="target", train=True, mutable=["batch_stats"])
    assert _max_diff(_domain_stats(updated["batch_stats"], "target"),
                     _domain_stats(s1.batch_stats, "target")) < 1e-5


def test_mic_masked_pass_enters_the_running_statistics_only_when_asked():
  """MIC's student runs the masked image in train mode (its shared BN's running statistics
  absorb it): mix.mic_update_stats. Off, the statistics are those of a step without MIC."""
  shared = dict(model__norm_mode="shared", mix__enabled=True, mix__norm="target")
  runs = {}
  for name, extra in (("no_mic", {}), ("off", dict(mix__mic_weight=1.0, mix__mic_block=8)),
                      ("on", dict(mix__mic_weight=1.0, mix__mic_block=8,
                                  mix__mic_update_stats=True))):
    state, step, weights = _compiled(**shared, **extra)
    runs[name] = _run(state, step, weights)[0][1]
  assert _max_diff(runs["off"].batch_stats, runs["no_mic"].batch_stats) == 0.0
  assert _max_diff(runs["on"].batch_stats, runs["off"].batch_stats) > 0
  # Train-mode BN normalises with the batch's own statistics: the update is the same.
  assert _max_diff(runs["on"].params, runs["off"].params) == 0.0


@pytest.mark.parametrize("overrides,metric_names", [
    (dict(model__num_classes=19, differential__stuff_weight=1.0,
          differential__thing_weight=1.0, differential__stuff_bank=1,
          differential__thing_bank=1), ("stuff_loss", "thing_loss")),
    (dict(clustering__cluster=0.02, clustering__ortho=2.0, clustering__sparse=0.5,
          clustering__entropy=0.1), ("cluster", "ortho", "sparse")),
])
def test_feature_space_losses_run_in_the_step_and_reach_the_segmenter(overrides, metric_names):
  state, step, weights = _compiled(**overrides)
  num_classes = overrides.get("model__num_classes", 5)
  if "banks" in state.method_state:
    # Full banks (every class written once more than its size) of random source features, so
    # the target losses are active from the first step, as after a warm-up.
    banks = dict(state.method_state["banks"])
    rng = np.random.default_rng(3)
    for kind in ("stuff", "thing"):
      banks[kind] = jnp.asarray(rng.uniform(0, 1, banks[kind].shape), jnp.float32)
      banks[f"{kind}_count"] = jnp.full_like(banks[f"{kind}_count"], banks[kind].shape[1] + 1)
    state = state.replace(method_state={**state.method_state, "banks": banks})
  states, metrics = _run(state, step, weights, steps=3, num_classes=num_classes)
  for name in metric_names:
    assert any(name in k for k in metrics), (name, sorted(metrics))
  assert all(np.isfinite(float(v)) for v in metrics.values())
  off = {**weights, **{k: jnp.float32(0.0) for k in weights
                       if k in ("stuff_weight", "thing_weight", "cluster", "ortho", "sparse",
                                "entropy")}}
  states_off, _ = _run(state, step, off, steps=3, num_classes=num_classes)
  assert _max_diff(states[-1].params, states_off[-1].params) > 0
  if "stuff_loss" in metric_names:  # the memory banks are written by the source pass
    assert _max_diff(states[-1].method_state["banks"], state.method_state["banks"]) > 0


def test_mixing_run_with_rcs_resumes_teacher_and_student_exactly(synthetic_data_dir,
                                                                 tmp_path):
  def config(num_steps):
    c = helpers.tiny_train_config(synthetic_data_dir, num_steps)
    c.adv.mode = "none"
    c.mix.enabled = True
    c.mix.mic_weight = 1.0
    c.mix.mic_block = 8
    c.mix.fd_weight = 0.005
    c.data.source.rcs_temperature = 0.1
    c.data.source.rcs_min_pixels = 4
    return c

  train.train_and_evaluate(config(4), str(tmp_path / "straight"))
  train.train_and_evaluate(config(2), str(tmp_path / "resumed"))
  train.train_and_evaluate(config(4), str(tmp_path / "resumed"))  # picks up at step 2
  trainer = train_step.build_trainer(config(4))
  abstract = train.checkpoint_items(train_step.abstract_state(trainer))
  stored = [checkpointing.restore_train(tmp_path / run / "checkpoints", abstract, 4)[0]
            for run in ("straight", "resumed")]
  assert set(stored[0]) >= {checkpointing.MODEL, "method_state"}
  assert set(stored[0]["method_state"]) == {"teacher", "fd_reference"}
  jax.tree.map(np.testing.assert_array_equal, stored[0], stored[1])


def test_fd_reference_reads_the_named_checkpoint_at_a_fresh_start(tmp_path):
  """mix.fd_reference=<checkpoint>: the feature distance's frozen reference holds that
  checkpoint's variables (a plain-BN one fills every SEAT slot, as init_from does), not the
  initial model; `init` keeps the copy; a missing folder or another model fails naming the key."""
  config = _config(mix__enabled=True, mix__fd_weight=0.005)
  trainer = train_step.build_trainer(config)
  state = train_step.create_state(trainer, 0)
  kept = train.load_method_files(trainer, state).method_state
  jax.tree.map(np.testing.assert_array_equal, kept["fd_reference"], state.model_variables())

  plain = config.model.copy_and_resolve_references()
  plain.norm_mode = "shared"
  stored = helpers.random_variables(models.build_segmenter(plain), 5)
  checkpointing.save_variables(tmp_path / "reference", stored, {})
  config.mix.fd_reference = str(tmp_path / "reference")
  trainer = train_step.build_trainer(config)
  loaded = train.load_method_files(trainer, state).method_state
  jax.tree.map(np.testing.assert_array_equal, loaded["teacher"], kept["teacher"])
  for collection, leaf in (("params", "scale"), ("params", "bias"), ("batch_stats", "mean"),
                           ("batch_stats", "var")):
    want = stored[collection]["layer4"]["block0"]["bn3"][leaf]
    for domain in ("source", "target"):
      got = loaded["fd_reference"][collection]["layer4"]["block0"]["bn3"][f"{domain}_{leaf}"]
      np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(loaded["fd_reference"]["params"]["layer2"]["block0"]["conv2"]
                                ["kernel"], stored["params"]["layer2"]["block0"]["conv2"]["kernel"])
  assert not np.array_equal(loaded["fd_reference"]["params"]["conv1"]["kernel"],
                            state.params["conv1"]["kernel"])

  config.mix.fd_reference = str(tmp_path / "nowhere")
  with pytest.raises(checkpointing.CheckpointNotFoundError,
                     match=f"config.mix.fd_reference={tmp_path / 'nowhere'}: No checkpoint"):
    train.load_method_files(train_step.build_trainer(config), state)
  plain.base_width = 16
  checkpointing.save_variables(tmp_path / "wider", helpers.random_variables(
      models.build_segmenter(plain), 5), {})
  config.mix.fd_reference = str(tmp_path / "wider")
  with pytest.raises(errors.InvalidInputError,
                     match="config.mix.fd_reference=.*wider.*holds a different model"):
    train.load_method_files(train_step.build_trainer(config), state)
