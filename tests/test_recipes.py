"""The recipes above training on the demo's data at a toy size: each runs its parts in order,
and a rerun keeps finished parts and continues from the one that stopped."""

import json

import pytest

from seat_jax import config_defaults
from seat_jax import datasets
from seat_jax import demo
from seat_jax import pseudo_labels
from seat_jax import recipes
from seat_jax import train
from seat_jax.recipes import parts


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tfds"))
  for domain in ("source", "target"):
    datasets.prepare("synthetic_streets", directory, builder_config=domain)
  return directory


def _config(row, data_dir, mode):
  # Batch 2 at 32x64 and 2 steps: the programs of tests/test_train.py and test_demo.py.
  config = demo.run_config(row, data_dir, 2, "32x64", 2, "scratch")
  config.mode = mode
  config.train.checkpoint_every = 2
  return config


def _refuse(*args, **kwargs):
  raise AssertionError("a finished part ran again")


def test_every_mode_has_a_runner():
  assert set(recipes.RUNNERS) == set(config_defaults.MODES)


def test_paper_pipeline_runs_its_parts_and_resumes_after_a_crash(data_dir, tmp_path,
                                                                 monkeypatch):
  config = _config("seat", data_dir, "pipeline")
  config.pseudo.rule = "class_quantile"

  def crash(*args, **kwargs):
    raise RuntimeError("power cut")

  with monkeypatch.context() as patch:
    patch.setattr(pseudo_labels, "generate", crash)
    with pytest.raises(RuntimeError, match="power cut"):
      recipes.run(config, str(tmp_path))
  assert (tmp_path / "stage1" / "done_train.json").exists()
  assert (tmp_path / "stage1" / "done_eval.json").exists()
  assert not (tmp_path / "stage2").exists()

  trained = []
  real_train = train.train_and_evaluate
  monkeypatch.setattr(train, "train_and_evaluate",
                      lambda c, w: trained.append((w, c)) or real_train(c, w))
  results = recipes.run(config, str(tmp_path))
  # Only stage 2 trained: stage 1 was kept.
  assert [w for w, _ in trained] == [str(tmp_path / "stage2")]
  stage2 = trained[0][1]
  assert stage2.loss.target_ce_weight == 1.0 and stage2.init_from == "scratch"
  assert stage2.data.target.pseudo_label_dir == str(tmp_path / "stage1" / "pseudo_labels")
  assert list((tmp_path / "stage1" / "pseudo_labels").glob("*.png"))
  assert list(results) == ["stage 1", "stage 2"]
  written = json.loads((tmp_path / "results.json").read_text())
  assert written == {k: parts.mean_scores(v) for k, v in results.items()}

  monkeypatch.setattr(train, "train_and_evaluate", _refuse)
  monkeypatch.setattr(pseudo_labels, "generate", _refuse)
  assert json.loads(json.dumps(recipes.run(config, str(tmp_path)))) == json.loads(
      json.dumps(results))


def test_adabn_recipe_trains_adapts_and_evaluates(data_dir, tmp_path):
  config = _config("shared", data_dir, "adabn")
  results = recipes.run(config, str(tmp_path))
  summary = json.loads((tmp_path / "adabn" / "summary.json").read_text())
  assert summary["step"] == 2 and summary["num_norms"] > 0
  assert (tmp_path / "done_train.json").exists()
  assert 0.0 <= results["AdaBN"]["miou"] <= 1.0
  eval_summary = json.loads((tmp_path / "adabn" / "eval" / "summary.json").read_text())
  assert eval_summary["checkpoints"].startswith(str(tmp_path / "adabn"))


def test_intrada_recipe_ranks_then_adapts_easy_to_hard(data_dir, tmp_path, monkeypatch):
  config = _config("intrada", data_dir, "intrada")
  trained = []
  real_train = train.train_and_evaluate
  monkeypatch.setattr(train, "train_and_evaluate",
                      lambda c, w: trained.append((w, c)) or real_train(c, w))
  results = recipes.run(config, str(tmp_path))
  ranking = tmp_path / "stage1" / "entropy_rank"
  easy = (ranking / "easy_split.txt").read_text().split()
  hard = (ranking / "hard_split.txt").read_text().split()
  assert easy and hard and not set(easy) & set(hard)
  assert [w for w, _ in trained] == [str(tmp_path / "stage1"), str(tmp_path / "stage2")]
  stage2 = trained[1][1]
  assert stage2.data.source.ids_file == str(ranking / "easy_split.txt")
  assert stage2.data.source.pseudo_label_dir == str(ranking / "pseudo_labels")
  assert stage2.data.target.ids_file == str(ranking / "hard_split.txt")
  assert list(results) == ["stage 1 (best on val)", "stage 2"]
