"""`python -m seat_jax.export`: the jax.export artifact and the TensorFlow SavedModel run in a
fresh process that never imports seat_jax (the documentation's own snippets) and agree with
`predict`; the model card says what they expect."""

import json
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import helpers
from data_builders.synthetic_streets import synthetic_streets_dataset_builder as streets
from seat_jax import export
from seat_jax import input_pipeline
from seat_jax import models
from seat_jax import predict

# Its module fixture trains once: one worker runs the module (`make test`: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("test_export")

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE_STAGES = (4,)  # a layer switch, to check it is baked in
DOCS = REPO / "docs" / "use-a-model.md"

# Runs after the documentation's snippets, in their namespace: sizes the snippets did not try
# (the batch, height and width are symbolic), and what the test compares.
_CHECK = """
import sys
other = np.stack([np.asarray(image.resize((100, 72), Image.BICUBIC))] * 2)
other_jax = exported.call(other)
other_tf = model.signatures["serving_default"](images=tf.constant(other))
assert not [m for m in sys.modules if m.split(".")[0] == "seat_jax"], "seat_jax was imported"
np.savez(sys.argv[1], batch=batch, labels=np.asarray(outputs["labels"]),
         logits=np.asarray(outputs["logits"]), tf_labels=tf_outputs["labels"].numpy(),
         tf_logits=tf_outputs["logits"].numpy(), other=other,
         other_labels=np.asarray(other_jax["labels"]), other_tf_logits=other_tf["logits"].numpy(),
         other_logits=np.asarray(other_jax["logits"]))
"""


def _python_blocks(markdown: str) -> list[str]:
  return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """demo_workdir/ as the documentation names it: the SEAT run (evaluated once), a few target
  images, and the export of the run."""
  root = tmp_path_factory.mktemp("docs")
  workdir = root / "demo_workdir"
  # Small heads: logits of a trained model's magnitude (tens), so 1e-4 is a few float32 ulps.
  config, variables = helpers.demo_checkpoint(workdir / "seat", step=3, head_kernel_scale=0.1)
  config.eval.source_stages = SOURCE_STAGES
  (workdir / "seat" / "eval").mkdir(parents=True)
  (workdir / "seat" / "eval" / "summary.json").write_text(json.dumps(
      {"label_space": "cityscapes19", "source_stages": list(SOURCE_STAGES),
       "steps": {"3": {"mIoU19": 0.25}}}))
  (workdir / "target_images").mkdir()
  image = streets.generate_example(0, "target", "validation", 0, (128, 256))[0]
  Image.fromarray(image).save(workdir / "target_images" / "target_validation_00000.png")
  logged = []
  card = export.export(config, str(workdir / "seat"), str(workdir / "exported"),
                       preset="configs/demo.py", log=logged.append)
  return root, config, variables, card, logged


def test_the_model_card_says_what_goes_in_and_comes_out(exported):
  root, _, _, card, logged = exported
  assert card == json.loads((root / "demo_workdir" / "exported" / "model_card.json").read_text())
  assert card["preset"] == "configs/demo.py" and card["label_space"] == "cityscapes19"
  assert card["classes"][0] == "road" and card["palette"][0] == [128, 64, 128]
  assert card["cityscapes_label_ids"][:3] == [7, 8, 11]
  assert card["norm_domain"] == "target" and card["layer_switch_source_stages"] == [4]
  assert card["input"]["scale"]["trained_at_hw"] == [64, 128]
  assert card["input"]["mean_bgr"] == pytest.approx([104.00698793, 116.66876762, 122.67891434])
  assert card["checkpoint"]["step"] == 3
  assert card["evaluation"]["means"] == {"mIoU19": 0.25}
  assert card["files"] == {"jax_export": "model.jax", "saved_model": "saved_model"}
  assert card["platforms"] == ["cpu", "cuda"]
  assert any("model.jax (" in line and "MiB)" in line for line in logged)


def test_the_documented_snippets_run_without_seat_jax_and_match_predict(exported):
  root, config, variables, _, _ = exported
  snippets = _python_blocks(DOCS.read_text())
  assert len(snippets) == 2 and "jax.export.deserialize" in snippets[0]
  script = root / "snippets.py"
  script.write_text("\n".join(snippets) + _CHECK)
  env = helpers.suite_env()
  env.pop("PYTHONPATH")  # seat_jax must not even be importable by accident
  result = subprocess.run([sys.executable, str(script), str(root / "outputs.npz")], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  got = np.load(root / "outputs.npz")

  model = models.build_segmenter(config.model)
  predict_fn = predict.make_predict_fn(model, SOURCE_STAGES)
  jax_fn = jax.jit(export.inference_fn(model, "target", SOURCE_STAGES))
  for prefix, images in (("", got["batch"]), ("other_", got["other"])):
    assert got[f"{prefix}labels"].shape == images.shape[:3]  # symbolic batch, height, width
    inputs = np.stack([input_pipeline.to_model_input(i) for i in images])
    np.testing.assert_array_equal(
        got[f"{prefix}labels"], predict_fn(variables, inputs, out_hw=images.shape[1:3]))
    logits = np.asarray(jax_fn(variables, images)["logits"])
    np.testing.assert_allclose(got[f"{prefix}logits"], logits, atol=1e-4)
  np.testing.assert_array_equal(got["tf_labels"], got["labels"])
  np.testing.assert_allclose(got["tf_logits"], got["logits"], atol=1e-4)
  np.testing.assert_allclose(got["other_tf_logits"], got["other_logits"], atol=1e-4)
  assert len(np.unique(got["labels"])) > 1


def test_bad_formats_and_platforms_are_usage_errors(exported):
  root, config, _, _, _ = exported
  from seat_jax import errors  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.UsageError, match="--formats"):
    export.export(config, str(root / "demo_workdir" / "seat"), str(root / "x"), formats=["onnx"])
  with pytest.raises(errors.UsageError, match="--platforms"):
    export.export(config, str(root / "demo_workdir" / "seat"), str(root / "x"),
                  platforms=["metal"])
