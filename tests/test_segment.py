"""`python -m seat_jax.segment`: own images of any size, folders, globs and videos, predicted as
evaluation predicts (`predict`), written at the inputs' sizes; unreadable files skipped and
reported; a user's mistakes as one `error:` block."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import helpers
from data_builders.synthetic_streets import synthetic_streets_dataset_builder as streets
from seat_jax import errors
from seat_jax import input_pipeline
from seat_jax import labels
from seat_jax import models
from seat_jax import predict
from seat_jax import reports
from seat_jax import segment

# Its module fixture trains once: one worker runs the module (`make test`: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("test_segment")

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE_STAGES = (4,)  # the layer switch: layer4 on the source norms


def street(index: int, hw) -> np.ndarray:
  return streets.generate_example(0, "target", "validation", index, hw)[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A demo-model run's workdir and its (config, variables)."""
  workdir = tmp_path_factory.mktemp("run")
  config, variables = helpers.demo_checkpoint(workdir)
  config.eval.source_stages = SOURCE_STAGES
  return workdir, config, variables


@pytest.fixture(scope="module")
def segmenter(run):
  workdir, config, _ = run
  return segment.load_segmenter(config, str(workdir), batch_size=2)


def expected_labels(config, variables, image: np.ndarray) -> np.ndarray:
  """What evaluation's predict function says for `image` at the model's scale."""
  model = models.build_segmenter(config.model)
  fn = predict.make_predict_fn(model, SOURCE_STAGES)
  hw = predict.model_input_hw(image.shape[:2], "", config.data.val.resize_hw)
  return np.asarray(fn(variables, input_pipeline.preprocess_image(image, hw)[None],
                       out_hw=image.shape[:2]))[0]


def test_scale_rule_keeps_the_aspect_ratio_at_the_trained_width():
  assert predict.model_input_hw((1024, 2048), "", (512, 1024)) == (512, 1024)  # Cityscapes
  assert predict.model_input_hw((2160, 3840), "", (512, 1024)) == (576, 1024)  # 4K dash-cam
  assert predict.model_input_hw((480, 640), "", (512, 1024)) == (768, 1024)  # a photo
  assert predict.model_input_hw((480, 640), "320", (512, 1024)) == (240, 320)
  assert predict.model_input_hw((480, 640), "256x512", (512, 1024)) == (256, 512)
  assert predict.model_input_hw((480, 640), "input", (512, 1024)) == (480, 640)
  with pytest.raises(errors.UsageError, match="not a scale"):
    predict.parse_scale("big")
  with pytest.raises(errors.InvalidInputError, match="at least 16"):
    predict.model_input_hw((12, 30), "input", (512, 1024))


def test_inputs_are_files_folders_and_globs(tmp_path):
  for name in ("a/1.png", "a/sub/2.JPG", "a/notes.txt", "b/3.png", "clip.mp4", "odd.dat"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b"")
  inputs = segment.expand_inputs([str(tmp_path / "a"), str(tmp_path / "b" / "*.png"),
                                  str(tmp_path / "a" / "1.png"), str(tmp_path / "clip.mp4"),
                                  str(tmp_path / "odd.dat"), str(tmp_path / "none.png")])
  assert [pathlib.Path(p).relative_to(tmp_path).as_posix() for p in inputs.images] == [
      "a/1.png", "a/sub/2.JPG", "b/3.png", "odd.dat"]  # named files whatever their suffix
  assert inputs.videos == [str(tmp_path / "clip.mp4")]
  assert inputs.missing == [(str(tmp_path / "none.png"), "no such file or folder")]
  assert segment.output_names(["x/f.png", "y/f.png", "g.jpg"]) == {
      "x/f.png": "f", "y/f.png": "f_2", "g.jpg": "g"}


def test_a_folder_of_sizes_comes_back_at_each_size_as_predict_labels_it(
    run, segmenter, tmp_path, capsys):
  _, config, variables = run
  folder = tmp_path / "photos"
  sizes = {"wide_a": (128, 256), "wide_b": (128, 256), "wide_c": (128, 256), "small": (96, 160),
           "tall": (120, 90)}
  images = {}
  for index, (name, hw) in enumerate(sizes.items()):
    images[name] = street(index, hw)
    (folder / ("sub" if name == "tall" else "")).mkdir(parents=True, exist_ok=True)
    Image.fromarray(images[name]).save(folder / ("sub" if name == "tall" else "") / f"{name}.png")
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  out = tmp_path / "out"

  summary = segment.segment(segmenter, segment.expand_inputs([str(folder)]), str(out))

  assert summary.images == 5 and summary.frames == 5
  assert summary.skipped == [(str(folder / "broken.png"), summary.skipped[0][1])]
  assert "not a readable image" in summary.skipped[0][1]
  printed = capsys.readouterr()
  assert f"skipped {folder / 'broken.png'}: not a readable image" in printed.err
  assert "segment 6/6 (100%)" in printed.out and "frames/s" in printed.out
  space = labels.get_label_space("cityscapes19")
  for name, image in images.items():
    train_ids = np.asarray(Image.open(out / f"{name}_trainIds.png"))
    assert train_ids.shape == image.shape[:2], name
    np.testing.assert_array_equal(train_ids, expected_labels(config, variables, image))
    np.testing.assert_array_equal(np.asarray(Image.open(out / f"{name}_labelIds.png")),
                                  reports.to_label_id_image(train_ids, space))
    colors = labels.colorize(train_ids, space.palette)
    np.testing.assert_array_equal(np.asarray(Image.open(out / f"{name}_color.png")), colors)
    np.testing.assert_array_equal(np.asarray(Image.open(out / f"{name}_overlay.png")),
                                  segment.overlay(image, colors, 0.5))
  assert len(np.unique(train_ids)) > 1  # the random model is not constant


def test_a_video_gives_an_overlay_video_and_frames_labelled_as_predict_does(
    run, segmenter, tmp_path):
  _, config, variables = run
  helpers.write_video(tmp_path / "drive.mp4", [street(i, (96, 192)) for i in range(5)])
  frames = helpers.read_video(tmp_path / "drive.mp4")  # what the codec gives back
  out = tmp_path / "out"

  summary = segment.segment(segmenter, segment.expand_inputs([str(tmp_path / "drive.mp4")]),
                            str(out), outputs=("trainIds",), video_frames=True, progress=False)

  assert (summary.videos, summary.frames, summary.skipped) == (1, 5, [])
  written = helpers.read_video(out / "drive_overlay.mp4")
  assert len(written) == 5 and written[0].shape == (96, 192, 3)
  for index, frame in enumerate(frames):
    train_ids = np.asarray(Image.open(out / "drive_frames" / f"frame_{index:06d}_trainIds.png"))
    np.testing.assert_array_equal(train_ids, expected_labels(config, variables, frame))
  assert not list((out / "drive_frames").glob("*_color.png"))


def test_videos_without_pyav_name_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
  with pytest.raises(errors.UsageError, match=r"pip install -e '\.\[video\]'"):
    segment.import_av(["drive.mp4"])


def _command(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "seat_jax.segment", *args], cwd=cwd,
                        env=helpers.suite_env(), capture_output=True, text=True, timeout=300)


def test_mistakes_end_in_one_error_block(run, tmp_path):
  workdir, _, _ = run
  empty = _command("--config=configs/demo.py", f"--checkpoint={workdir}")
  assert empty.returncode == 2, empty.stderr
  assert empty.stderr.startswith("error: No inputs") and "Traceback" not in empty.stderr

  other = tmp_path / "other"
  helpers.demo_checkpoint(other, base_width=16)  # another model than configs/demo.py's
  Image.fromarray(street(0, (64, 128))).save(tmp_path / "street.png")
  wrong = _command("--config=configs/demo.py", f"--checkpoint={other}",
                   f"--out={tmp_path / 'out'}", str(tmp_path / "street.png"))
  assert wrong.returncode == 1, wrong.stderr
  assert wrong.stderr.startswith("error: ") and wrong.stderr.count("error:") == 1
  assert "holds a different model than the config describes" in wrong.stderr
  assert "Traceback" not in wrong.stderr
