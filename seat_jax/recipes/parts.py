"""What every recipe is written with: run a part unless it is done, resume it if it is partial.

A part is one training, evaluation or pass whose outputs land in one folder. When it finishes,
`done_<key>.json` is written there with the part's result; a rerun of the recipe finds it and
skips the part, so a recipe stopped anywhere continues where it stopped. A training part that
stopped half-way resumes from its last checkpoint (that is `train.train_and_evaluate`'s own
behaviour); the other parts are short and run again from their start.
"""

import json
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from etils import epath

from seat_jax import evaluate
from seat_jax import train


def copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An unlocked deep copy, for a part that changes a few keys of the recipe's config."""
  return ml_collections.ConfigDict(config.to_dict())


def _jsonable(value: Any) -> Any:
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if hasattr(value, "tolist"):  # numpy and jax arrays and scalars
    return value.tolist()
  return value


def run_part(key: str, title: str, directory, fn: Callable[[epath.Path], Any]) -> Any:
  """fn(directory) unless <directory>/done_<key>.json exists; returns fn's (or the kept) result."""
  directory = epath.Path(directory)
  marker = directory / f"done_{key}.json"
  if marker.exists():
    print(f"\n=== {title}: done in {directory}, kept (delete {marker.name} there to redo) ===",
          flush=True)
    return json.loads(marker.read_text())["result"]
  print(f"\n=== {title} -> {directory} ===", flush=True)
  result = _jsonable(fn(directory))
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"part": title, "result": result}, indent=2) + "\n")
  return result


def train_part(title: str, config: ml_collections.ConfigDict, directory) -> Any:
  return run_part("train", title, directory,
                  lambda d: train.train_and_evaluate(config, str(d)))


def final_scores(config: ml_collections.ConfigDict, run_dir, out_dir=None,
                 source_stages: tuple[int, ...] | None = None) -> dict[str, Any]:
  """Evaluation of the final step of the run in `run_dir` (results in <out_dir or run_dir>/eval),
  with the config's layer switch unless `source_stages` is given."""
  config = copy(config)
  config.eval.step = config.train.num_steps
  config.eval.checkpoint = str(run_dir)
  if source_stages is not None:
    config.eval.source_stages = tuple(source_stages)
  return evaluate.evaluate_checkpoints(config, out_dir or run_dir)["final"]


def eval_part(title: str, config: ml_collections.ConfigDict, run_dir, out_dir=None,
              source_stages: tuple[int, ...] | None = None) -> dict[str, Any]:
  out_dir = epath.Path(out_dir or run_dir)
  return run_part("eval", title, out_dir,
                  lambda d: final_scores(config, run_dir, d, source_stages))


def mean_scores(result: dict[str, Any]) -> dict[str, float]:
  """The mIoU entries of an evaluation result."""
  return {k: float(v) for k, v in result.items() if k.startswith("mIoU")}


def write_summary(workdir, title: str, rows: dict[str, dict[str, Any]]) -> str:
  """<workdir>/results.json (row -> mIoU entries) and one printed line per row."""
  workdir = epath.Path(workdir)
  means = {name: mean_scores(result) for name, result in rows.items()}
  lines = [f"{name}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in m.items())
           for name, m in means.items()]
  text = f"{title} (target validation):\n  " + "\n  ".join(lines) + "\n"
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "results.json").write_text(json.dumps(means, indent=2) + "\n")
  print("\n" + text, flush=True)
  return text
