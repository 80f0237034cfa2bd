"""`train_and_evaluate` end to end on synthetic_streets: outputs, exact resume, NaN stop, CLI."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import helpers
from seat_jax import checkpointing
from seat_jax import presets
from seat_jax import train
from seat_jax import train_step

# Its module fixture trains once: one worker runs the module (`make test`: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("test_train")

REPO = pathlib.Path(__file__).resolve().parents[1]


_config = helpers.tiny_train_config


def _final_params(workdir):
  trainer = train_step.build_trainer(_config(""))
  abstract = train_step.abstract_state(trainer).model_variables()
  return checkpointing.restore_model(pathlib.Path(workdir) / "checkpoints", abstract)


@pytest.fixture(scope="module")
def uninterrupted(synthetic_data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  config = _config(synthetic_data_dir)
  config.train.eval_every = 4
  config.train.eval_max_examples = 2
  metrics = train.train_and_evaluate(config, str(workdir))
  return workdir, metrics


def test_run_writes_checkpoints_events_config_and_eval(uninterrupted):
  workdir, metrics = uninterrupted
  assert checkpointing.list_steps(workdir / "checkpoints") == [2, 4]
  assert list(workdir.glob("events.out.tfevents.*"))
  resolved = json.loads((workdir / "config.json").read_text())
  assert resolved["model"]["norm_mode"] == "seat" and resolved["train"]["num_steps"] == 4
  assert (workdir / "eval" / "eval_step_4" / "iou.md").exists()
  assert np.isfinite(metrics["loss"]) and "d_main_source" in metrics


def test_resume_after_a_kill_matches_the_uninterrupted_run(uninterrupted, synthetic_data_dir,
                                                            tmp_path):
  workdir, metrics = uninterrupted
  train.train_and_evaluate(_config(synthetic_data_dir, num_steps=2), str(tmp_path))  # "killed"
  resumed = train.train_and_evaluate(_config(synthetic_data_dir, num_steps=4), str(tmp_path))
  assert resumed == metrics  # the same losses, bit for bit
  jax.tree.map(np.testing.assert_array_equal, _final_params(tmp_path), _final_params(workdir))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_data_dir, tmp_path):
  train.train_and_evaluate(_config(synthetic_data_dir, num_steps=2), str(tmp_path))
  exploding = _config(synthetic_data_dir, num_steps=6)
  exploding.optim.lr = 1e30
  with pytest.raises(train.NonFiniteLossError, match="last good checkpoint .step 2."):
    train.train_and_evaluate(exploding, str(tmp_path))
  assert checkpointing.list_steps(tmp_path / "checkpoints") == [2]
  params = _final_params(tmp_path)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_init_from_a_seat_run_into_plain_bn_asks_for_a_domain(uninterrupted, tmp_path):
  workdir, _ = uninterrupted
  config = _config("")
  config.model.norm_mode = "shared"
  config.init_from = str(workdir)
  trainer = train_step.build_trainer(config)
  with pytest.raises(ValueError, match=r"(?s)per-domain norms.*--config.init_domain=source"):
    train.initialise(trainer, tmp_path, data=None)
  config.init_domain = "target"
  state, _, how = train.initialise(train_step.build_trainer(config), tmp_path, data=None)
  assert "norm tensors taken from one domain (init_domain)" in how
  stored = _final_params(workdir)
  np.testing.assert_array_equal(state.params["layer3"]["block0"]["bn2"]["scale"],
                                stored["params"]["layer3"]["block0"]["bn2"]["target_scale"])


def test_init_from_a_checkpoint_of_another_model_names_the_difference(uninterrupted, tmp_path):
  workdir, _ = uninterrupted
  config = _config("")
  config.model.base_width = 16
  config.init_from = str(workdir)
  trainer = train_step.build_trainer(config)
  with pytest.raises(ValueError, match=r"(?s)holds a different model.*shape differs: "
                                       r"params/conv1/kernel: stored \(7, 7, 3, 8\), "
                                       r"model \(7, 7, 3, 16\)"):
    train.initialise(trainer, tmp_path, data=None)


def test_a_damaged_step_names_its_folder_and_the_other_steps(uninterrupted, tmp_path):
  workdir, _ = uninterrupted
  copy = tmp_path / "run"
  shutil.copytree(workdir / "checkpoints", copy / "checkpoints")
  for data_file in (copy / "checkpoints" / "4" / "model").rglob("d/*"):
    data_file.write_bytes(data_file.read_bytes()[:len(data_file.read_bytes()) // 2])
  trainer = train_step.build_trainer(_config(""))
  abstract = train_step.abstract_state(trainer).model_variables()
  with pytest.raises(checkpointing.DamagedCheckpointError,
                     match=r"(?s)Step 4 of .*/run/checkpoints cannot be read.*Copy "
                           r".*/run/checkpoints/4 again.*Other saved steps: \[2\]; "
                           r"--config.eval.step=<step>"):
    checkpointing.restore_model(copy / "checkpoints", abstract)
  checkpointing.restore_model(copy / "checkpoints", abstract, step=2)  # the other step reads


def _run_cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", "seat_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, env=env, timeout=300)


def _error_block(result):
  """The stderr of a command stopped by a user's mistake: an `error:` block, no traceback."""
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr
  return result.stderr[result.stderr.index("error: "):]


def test_cli_rejects_an_unknown_config_key(tmp_path):
  result = _run_cli("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.model.bogus=1")
  assert result.returncode == 2
  assert "bogus" in result.stderr
  error = _error_block(result)
  assert error.startswith("error: --config.model.bogus=1: config.model has no key 'bogus'")
  assert "norm_mode" in error  # the keys that do exist there


def test_cli_rejects_a_bad_choice_with_the_accepted_values(tmp_path):
  result = _run_cli("--config=configs/demo.py", f"--workdir={tmp_path}",
                    "--config.model.norm_mode=batch")
  assert result.returncode != 0
  assert "config.model.norm_mode='batch' is not one of ('shared', 'sat', 'seat')" in result.stderr
  assert _error_block(result).startswith("error: Invalid config")


def test_cli_user_mistakes_end_with_an_error_block_and_no_traceback(tmp_path):
  missing_file = _run_cli("--config=configs/demo_typo.py", f"--workdir={tmp_path}")
  assert "configs/demo_typo.py: no such file" in _error_block(missing_file)
  assert "demo.py" in _error_block(missing_file)  # the presets that do exist

  no_checkpoint = _run_cli("--config=configs/demo.py", f"--workdir={tmp_path}",
                           "--config.mode=eval")
  assert no_checkpoint.returncode == 1
  assert _error_block(no_checkpoint).startswith(f"error: No checkpoint in {tmp_path}")

  stage2_eval = _run_cli("--config=configs/gta_stage2.py", f"--workdir={tmp_path}",
                         "--config.mode=eval")  # its training inputs are not needed here
  assert _error_block(stage2_eval).startswith(f"error: No checkpoint in {tmp_path}")

  typo = _run_cli("--config=configs/gta.py:sourceonly", f"--workdir={tmp_path}")
  assert typo.returncode == 2
  error = _error_block(typo)
  assert error.startswith("error: configs/gta.py has no preset 'sourceonly'. Did you mean "
                          "--config=configs/gta.py:source_only?")
  listed = error.split("(without a row: mul):", 1)[1].replace("\n", " ")
  assert {r.strip() for r in listed.split(",")} == set(presets.GTA_ROWS)

  not_prepared = _run_cli("--config=configs/gta.py", f"--workdir={tmp_path / 'run'}",
                          f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.init_from=x")
  error = _error_block(not_prepared)
  assert error.startswith("error: dataset 'gta5' (builder_config 'translated') is not prepared")
  assert "python -m seat_jax.prepare_data gta5 --builder_config=translated" in error


_SHARDED_SCRIPT = r"""
import re
import jax, numpy as np
from seat_jax import presets, train_step
config = presets.demo("seat")
config.model.num_classes = 5
config.train.batch_size = 4
rng = np.random.default_rng(0)
batch = {"source_image": rng.normal(size=(4, 32, 48, 3)).astype(np.float32) * 50,
         "source_label": rng.integers(0, 5, size=(4, 32, 48)).astype(np.int32),
         "target_image": rng.normal(size=(4, 32, 48, 3)).astype(np.float32) * 30}
results, collectives = [], []
# One device, four, and four with the joint pass (source and target in one segmenter pass).
for devices, joint in ((jax.devices()[:1], False), (jax.devices(), False), (jax.devices(), True)):
  config.train.joint_pass = joint
  trainer = train_step.build_trainer(config, devices=devices)
  state = train_step.create_state(trainer, 0)
  weights = jax.device_put(train_step.loss_weights(config), trainer.replicated)
  global_batch = {k: jax.device_put(v, trainer.data_sharding) for k, v in batch.items()}
  compiled = train_step.jit_train_step(trainer).lower(state, global_batch, weights).compile()
  text = compiled.as_text()
  collectives.append({op: len(re.findall(r"\b" + op + r"(?:-start)?\(", text)) for op in
                      ("all-reduce", "all-gather", "all-to-all", "collective-permute")})
  state, metrics = compiled(state, global_batch, weights)
  state, metrics = compiled(state, global_batch, weights)
  assert len(state.params["conv1"]["kernel"].sharding.device_set) == len(devices)
  results.append(jax.device_get((state.params, state.batch_stats, state.disc_params, metrics)))
single, sharded, joint = results
check = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
jax.tree.map(check, single, sharded)
print("devices", jax.device_count(), "loss", sharded[3]["loss"], single[3]["loss"])
# The joint pass: the same segmenter; each device's pairs stay on it (no gather, all-to-all or
# permute of activations), and one all-reduce per norm instead of one per pass.
jax.tree.map(check, single[:2], joint[:2])
_, two, one = collectives
assert one["all-gather"] == one["all-to-all"] == one["collective-permute"] == 0, one
assert one["all-reduce"] < two["all-reduce"], collectives
print("collectives", two, one)
"""


def test_step_sharded_over_four_cpu_devices_equals_one_device(tmp_path):
  script = tmp_path / "sharded.py"
  script.write_text(_SHARDED_SCRIPT)
  # Full XLA optimisation here, unlike the rest of the suite: with
  # JAX_DISABLE_MOST_OPTIMIZATIONS the 4-device step drifts from the 1-device one by ~1e-4
  # relative (measured), while optimised builds agree to ~1e-7.
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "TF_CPP_MIN_LOG_LEVEL": "3"}
  result = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "devices 4" in result.stdout and "collectives" in result.stdout
