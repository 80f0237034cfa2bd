"""Every shell command of README.md and docs/*.md runs, on tiny fake copies of the datasets.

The commands are the lines of the ```bash blocks (a trailing backslash continues a line, `#`
starts a comment), taken from README.md, then the pages in mkdocs.yml's nav order, then any
other docs/*.md page: a new page's commands are picked up without changing this file. They run
in that order in one shared folder, so a page can use what an earlier command made (the
README's sequence prepares, converts, trains, evaluates, pseudo-labels and trains stage 2;
later pages evaluate that run). A command identical to one already run is not run again.

What the folder holds instead of the real data: `/data/gta5`, `/data/RAND_CITYSCAPES` and
`/data/cityscapes` are the builders' fake copies of each dataset's real folder layout and file
formats (data_builders/*/make_fake_data.py; the Cityscapes train images carry ids of Toldo et
al.'s train list, which the clustering presets read); `/data/tfds` and `/ckpt` are empty
folders there; `DeepLab_resnet_pretrained_init-f81d91e8.pth` and `resnet101-63fe2227.pth` are
tiny PyTorch files in the layouts of the DeepLab COCO init (a `layer5` classifier on layer4) and
of torchvision's ResNet; `resnet101_v1c-e67eebb6.pth` a tiny mmseg ResNetV1c as open-mmlab
stores it; `mit_b5.pth` and `mit-b5/` a tiny random MiT in mmseg's and Hugging Face's layouts; `configs/` is the repository's. Before the first command that reads
`demo_workdir/` (the model-use page), a small stand-in of what `make demo` leaves is made: the
demo's SEAT row trained for two steps, and its target images and clip.

How they run: in order, by one helper process (tests/docs_commands_runner.py) that calls
`python -m seat_jax.main`, `prepare_data` and `convert` in-process (their `main(argv)`, so the
commands share compiled programs and the suite's compile cache) and runs any other
`python -m seat_jax.<module>` and `python -c` as subprocesses; every one must exit 0. Every
command of a GPU-scale preset (`--config=configs/gta*.py` or `configs/synthia*.py`) gets the
TINY overrides below appended: the tiny model of the demo, 32x64 images, two steps. A command of
another shape, or one that cannot run here, fails the test unless SKIPPED lists it with the
reason.

At the end, the user mistakes that must end in a clean `error:` block are tried on the same
folder, each in its own process: a preset name with a typo (every row of the file listed, the
closest one named) and a damaged checkpoint (its step folder named, with the way out: an earlier
step, `--config.eval.step`). Evaluating stage 2 with its own config is one of the README's
commands. Measured on 2 cores shared with other test runs: 2.2-3.4 minutes of CPU time; wall
time 2.7-3.9 minutes at a load average of about 4 (4.4 with an empty compile cache), 6.6 at 6-7.
"""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import pytest

torch = pytest.importorskip("torch")

from data_builders.cityscapes import make_fake_data as fake_cityscapes  # noqa: E402
from data_builders.gta5 import make_fake_data as fake_gta5  # noqa: E402
from data_builders.synthia import make_fake_data as fake_synthia  # noqa: E402
import torch_reference as tref  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

# Appended to every command of a GPU-scale preset: the demo's tiny model (one block per stage,
# width 8, as the fake init files hold), 32x64 images, two training steps, and FDA's recipe
# with one beta and no self-training round (nine trainings otherwise; tests/test_fda_method.py
# runs the rounds). Nothing else changes.
TINY = (
    "--config.model.stage_sizes=(1,1,1,1)", "--config.model.base_width=8",
    "--config.data.source.resize_hw=(32,64)", "--config.data.source.crop_hw=(32,64)",
    "--config.data.target.resize_hw=(32,64)", "--config.data.target.crop_hw=()",
    "--config.data.val.resize_hw=(32,64)",
    "--config.train.num_steps=2", "--config.train.lr_horizon_steps=2",
    "--config.train.checkpoint_every=2", "--config.train.eval_every=0",
    "--config.fda.rounds=0", "--config.fda.betas=(0.01,)",
)
GPU_SCALE_CONFIG = re.compile(r"^--config=configs/(gta|synthia)")

# Commands this test does not run, each with the reason (the text after `#` removed).
SKIPPED = {
    "make demo": "the whole demo (7-13 minutes); tests/test_demo.py runs it at toy size",
    "make test": "the test suite itself (CI runs it)",
    "make docs": "tests/test_docs_build.py builds the site as `make docs` does",
    "pip install -e .": "installs packages; `make demo` and `make test` (CI) install them",
    'pip install -U "jax[cuda12]==0.10.2"': "installs the CUDA plugin: needs a CUDA GPU",
    "pip install -e '.[torch]'": "installs packages; `make test` (CI) installs this extra",
    "python3 -m venv .venv && . .venv/bin/activate":
        "creates a virtual environment; `make` does it (CI)",
    "python -m seat_jax.demo --seed=1 --workdir=demo_seed1":
        "the whole demo (7-13 minutes); tests/test_demo.py runs it at toy size",
    "python benchmarks/gpu_check.py --json=gpu_check.json":
        "measures a GPU (its --smoke mode runs in tests/test_gpu_check.py)",
    # docs/multi-host.md: tests/test_multiprocess.py reads these two launch commands from that
    # page and runs them (two processes, a free port, tiny sizes, then a resume).
    "python -m seat_jax.main --config=configs/demo.py --workdir=runs/demo_2proc "
    "--config.data.data_dir=/data/tfds --coordinator_address=127.0.0.1:29500 "
    "--num_processes=2 --process_id=0 &": "run by tests/test_multiprocess.py",
    "python -m seat_jax.main --config=configs/demo.py --workdir=runs/demo_2proc "
    "--config.data.data_dir=/data/tfds --coordinator_address=127.0.0.1:29500 "
    "--num_processes=2 --process_id=1": "run by tests/test_multiprocess.py",
    "wait": "waits for the multi-process launch above (run by tests/test_multiprocess.py)",
    # docs/compared-methods.md: the adaptation stage reads Toldo et al.'s list of 2,475
    # Cityscapes train ids, and refuses a split that lacks any of them (the fake copy has 4).
    "python -m seat_jax.main --config=configs/gta.py:clustering --workdir=runs/toldo "
    "--config.data.data_dir=/data/tfds --config.init_from=runs/toldo_source":
        "needs the real Cityscapes train ids of Toldo et al.'s list; its step is tested in "
        "tests/test_method_steps.py, its losses in tests/test_clustering.py",
}



def normalise(command: str) -> str:
  """One spelling of a command line: comments dropped, words re-quoted, operators bare."""
  words = shlex.split(command, comments=True)
  return " ".join(w if w in ("&", "&&", ";", "|") else shlex.quote(w) for w in words)


SKIPPED = {normalise(command): reason for command, reason in SKIPPED.items()}


def pages() -> list[pathlib.Path]:
  """README.md, then docs/ pages in mkdocs.yml's nav order, then the other docs/*.md."""
  nav = re.findall(r"^\s*-\s.*?([\w-]+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), re.M)
  docs = REPO / "docs"
  ordered = [docs / name for name in nav if (docs / name).exists()]
  rest = sorted(p for p in docs.glob("*.md") if p not in ordered)
  return [REPO / "README.md", *ordered, *rest]


def commands(page: pathlib.Path) -> list[str]:
  """The commands of a page's ```bash blocks, continuation lines joined, comments dropped."""
  found = []
  for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
    for line in block.replace("\\\n", " ").splitlines():
      if line.strip():
        found.append(normalise(line))
  return [c for c in found if c]


def all_commands() -> list[tuple[str, str]]:
  return [(page.relative_to(REPO).as_posix(), c) for page in pages() for c in commands(page)]


def _fake_datasets(root: pathlib.Path) -> None:
  fake_gta5.make_fake_data(root / "data" / "gta5")
  fake_synthia.make_fake_data(root / "data" / "RAND_CITYSCAPES")
  cityscapes = root / "data" / "cityscapes"
  fake_cityscapes.make_fake_data(cityscapes)
  # The clustering presets read only the train ids of Toldo et al.'s list: give the fake train
  # images ids from it.
  listed = {"aachen_000000_000000": "aachen_000000_000019",
            "aachen_000000_000001": "aachen_000001_000019",
            "bochum_000000_000000": "bochum_000000_000313",
            "bochum_000000_000001": "bochum_000000_000600"}
  for path in list(cityscapes.rglob("*.*")):
    for old, new in listed.items():
      if path.name.startswith(old + "_"):
        path.rename(path.with_name(new + path.name[len(old):]))
  (root / "data" / "tfds").mkdir()
  (root / "ckpt").mkdir()


def _fake_inits(root: pathlib.Path) -> None:
  torch.manual_seed(0)
  model = tref.DeepLabMultiTorch(19, (1, 1, 1, 1), 8, 4, (6, 12, 18, 24))
  torch.save(tref.deeplab_init_state_dict(model, 21),
             str(root / "DeepLab_resnet_pretrained_init-f81d91e8.pth"))
  torch.save(tref.torchvision_state_dict(model), str(root / "resnet101-63fe2227.pth"))
  _fake_v1c_init(root)
  _fake_mit_inits(root)


def _fake_v1c_init(root: pathlib.Path) -> None:
  """A tiny random mmseg ResNetV1c (width 8, as TINY) saved as open-mmlab's resnet101_v1c:
  {'state_dict': ..., 'meta': ...} with an ImageNet classifier, for docs/pretrained-weights.md."""
  import test_resnet_v1c  # pylint: disable=g-import-not-at-top
  model = test_resnet_v1c.ResNetV1c((1, 1, 1, 1), stem_channels=8, base_channels=8)
  state = dict(model.state_dict())
  state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 8 * 8 * 4), torch.zeros(1000)
  torch.save({"state_dict": state, "meta": {}}, str(root / "resnet101_v1c-e67eebb6.pth"))


def _fake_mit_inits(root: pathlib.Path) -> None:
  """A tiny random MiT as Hugging Face saves nvidia/mit-b5 (`mit-b5/`) and in mmseg's mit_b*.pth
  layout (`mit_b5.pth`, an ImageNet classifier included), for docs/segformer.md."""
  transformers = pytest.importorskip("transformers")
  from safetensors import torch as safetensors_torch  # pylint: disable=g-import-not-at-top
  import test_segformer  # pylint: disable=g-import-not-at-top
  config = transformers.SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 16, 16],
                                        num_attention_heads=[1, 2, 2, 4], num_labels=5)
  transformers.SegformerForImageClassification(config).save_pretrained(root / "mit-b5")
  hf = safetensors_torch.load_file(root / "mit-b5" / "model.safetensors")
  state = {k.removeprefix("backbone."): v for k, v in test_segformer.mmseg_mit_names(hf).items()}
  state["head.weight"], state["head.bias"] = torch.zeros(1000, 16), torch.zeros(1000)
  torch.save(state, str(root / "mit_b5.pth"))


def _localise(command: str, root: pathlib.Path) -> str:
  """The command with /data/... and /ckpt/... moved under `root`."""
  return re.sub(r"(?<![\w./-])/(data|ckpt)/", lambda m: f"{root}/{m[1]}/", command)


def _env() -> dict[str, str]:
  """This suite's compile settings (tests/conftest.py), for subprocesses."""
  return {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
          "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
          "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
          "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _argv(command: str, root: pathlib.Path) -> list[str]:
  """The words of one documented command as this test runs it in `root`."""
  words = shlex.split(_localise(command, root))
  if words[:2] == ["python", "-c"]:
    return words
  if words[:2] != ["python", "-m"] or not words[2].startswith("seat_jax."):
    raise AssertionError(
        f"no way to run {command!r}: add how to tests/test_docs_commands.py, or list it in "
        "SKIPPED with the reason it cannot run here")
  if any(GPU_SCALE_CONFIG.match(a) for a in words[3:]):
    words += TINY
  return words


def _run_all(entries: list[dict], root: pathlib.Path) -> list[dict]:
  """Runs the planned entries in order in one helper process; the results, one per entry run."""
  plan, results = root / "plan.json", root / "results.jsonl"
  plan.write_text(json.dumps({"root": str(root), "commands": entries}))
  subprocess.run([sys.executable, str(REPO / "tests" / "docs_commands_runner.py"), str(plan),
                  str(results)], cwd=root, env=_env(), timeout=1800)
  return [json.loads(line) for line in results.read_text().splitlines()]


DEMO_STAND_IN = "(demo_workdir stand-in)"


def _demo_stand_in(root: pathlib.Path) -> list[dict]:
  """What `make demo` leaves that the model-use commands read (demo_workdir/seat, its target
  images and clip), made small: synthetic_streets prepared, the demo's SEAT row trained for two
  steps, the demo's own sample writer."""
  data_dir = root / "data" / "tfds"  # datasets.md prepared synthetic_streets here: kept
  train = ("python -m seat_jax.main --config=configs/demo.py --workdir=demo_workdir/seat "
           f"--config.data.data_dir={data_dir} --config.train.num_steps=2 "
           "--config.train.lr_horizon_steps=2 --config.train.checkpoint_every=2 "
           "--config.train.eval_every=0")
  prepare = ("from seat_jax import datasets\n"
             "for domain in ('source', 'target'):\n"
             f"  datasets.prepare('synthetic_streets', {str(data_dir)!r}, builder_config=domain)")
  samples = ("from seat_jax import demo\n"
             f"demo.write_target_samples('demo_workdir', {str(data_dir)!r})")
  return [{"page": DEMO_STAND_IN, "command": "python -c <prepare>",
           "argv": ["python", "-c", prepare]},
          {"page": DEMO_STAND_IN, "command": train, "argv": shlex.split(train)},
          {"page": DEMO_STAND_IN, "command": "python -c <samples>",
           "argv": ["python", "-c", samples]}]


def _error_block(code: int, printed: str) -> str:
  assert code != 0 and "Traceback" not in printed, printed[-3000:]
  return printed[printed.index("error: "):]


def test_every_command_is_run_or_listed_and_every_listing_is_used():
  collected = {c for _, c in all_commands()}
  stale = set(SKIPPED) - collected
  assert not stale, f"SKIPPED lists commands no page has any more: {stale}"
  pages_seen = {page for page, _ in all_commands()}
  assert "README.md" in pages_seen and "docs/pretrained-weights.md" in pages_seen


def test_every_documented_command_runs_on_fake_data(tmp_path):
  root = tmp_path / "docs_commands"
  root.mkdir()
  _fake_datasets(root)
  _fake_inits(root)
  (root / "configs").symlink_to(REPO / "configs")
  entries, done = [], set()
  for page, command in all_commands():
    if command not in SKIPPED and command not in done:
      if "demo_workdir/" in command and not any(e["page"] == DEMO_STAND_IN for e in entries):
        entries += _demo_stand_in(root)
      done.add(command)
      entries.append({"page": page, "command": command, "argv": _argv(command, root)})
  # The user mistakes that must end in an error block, on the same folder: a preset name with
  # a typo, and a damaged checkpoint (a copy of the README's run, its data files cut in half).
  # Each in a process of its own, as a user runs it, so all it prints is its own.
  typo = "python -m seat_jax.main --config=configs/gta.py:sourceonly --workdir=runs/typo"
  damaged = root / "runs" / "gta_seat_damaged"
  evaluate_damaged = ("python -m seat_jax.main --config=configs/gta.py "
                      f"--workdir={damaged} --config.data.data_dir=/data/tfds --config.mode=eval")
  entries.append({"page": "(typo)", "command": typo, "argv": _argv(typo, root), "expect": 2,
                  "isolated": True})
  entries.append({"page": "(damage)", "command": "python -c ...", "expect": 0, "argv": [
      "python", "-c", _DAMAGE.format(source=root / "runs" / "gta_seat", copy=damaged)]})
  entries.append({"page": "(damaged)", "command": evaluate_damaged, "expect": 1,
                  "argv": _argv(evaluate_damaged, root), "isolated": True})

  results = _run_all(entries, root)
  print("\n".join(f"{r['seconds']:6.1f} s  {r['page']}: {r['command']}" for r in results))
  print(f"{sum(r['seconds'] for r in results):6.1f} s  in all")
  for result in results[:len(entries) - 3]:
    assert result["code"] == 0, (f"{result['page']}: `{result['command']}` exited "
                                 f"{result['code']}:\n{result['printed']}")
  assert len(results) == len(entries), results[-1]["printed"]

  code, printed = results[-3]["code"], results[-3]["printed"]
  error = _error_block(code, printed)
  assert code == 2 and "Did you mean --config=configs/gta.py:source_only?" in error
  assert "cycada" in error and "mic_dlv2_seat" in error  # the whole listing
  code, printed = results[-1]["code"], results[-1]["printed"]
  error = _error_block(code, printed)
  assert code == 1 and "Step 2 of" in error and "cannot be read" in error
  assert f"Copy {damaged / 'checkpoints' / '2'} again, or use another step." in error
  assert "Other saved steps: [1]; --config.eval.step=<step> evaluates one" in error


# Copies a run's checkpoints, adds a readable earlier step (a copy of step 2 as step 1), and
# cuts every data file of the model item of step 2 in half (a copy that stopped half-way).
_DAMAGE = """
import pathlib, shutil
shutil.copytree("{source}/checkpoints", "{copy}/checkpoints")
shutil.copytree("{copy}/checkpoints/2", "{copy}/checkpoints/1")
for f in pathlib.Path("{copy}/checkpoints/2/model").rglob("d/*"):
  f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])
"""
