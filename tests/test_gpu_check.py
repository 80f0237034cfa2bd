"""benchmarks/gpu_check.py in its CPU smoke mode, so the GPU check is ready when a GPU is lent;
and its pieces that only a GPU run exercises (kernel split, a dead child's error), on made data."""

import json

import helpers

gpu_check = helpers.load_script("benchmarks/gpu_check.py")


def test_gpu_check_smoke_measures_every_part_and_prints_the_table(tmp_path, capsys):
  assert gpu_check.main(["--smoke", f"--json={tmp_path / 'check.json'}"]) == 0
  result = json.loads((tmp_path / "check.json").read_text())
  rows = result["rows"]
  assert [r["part"] for r in rows] == ["torch", "pipeline", "iteration", "eval"]
  assert not [r for r in rows if "failed" in r or "skipped" in r], rows
  torch_row, pipeline, iteration, evaluation = rows
  assert iteration["finite"] and iteration["tflop"] > 0 and iteration["xla_peak_gib"] > 0
  # the profiler ran and found no GPU streams on the CPU
  assert iteration["profile"] == {"note": "no device kernels in the trace (a CPU run)"}
  assert torch_row["it_per_s"] > 0 and evaluation["images_per_s"] > 0
  assert pipeline["pairs_per_s"] > 0 and pipeline["max_diff_vs_host"] <= 1.001
  assert result["device"].startswith("cpu:")
  out = capsys.readouterr().out
  assert "| JAX iteration, float32, remat blocks |" in out
  assert "JAX / PyTorch speed" in out and "| input pipeline," in out


def test_jobs_put_the_default_iteration_and_pytorch_before_remat_and_evaluation():
  jobs = gpu_check.jobs(["iteration", "torch", "pipeline", "eval"], ["float32", "bfloat16"],
                        ["none", "blocks"])
  assert jobs == [("iteration", "float32", "none"), ("iteration", "bfloat16", "none"),
                  ("torch", "float32"), ("torch", "bfloat16"), ("pipeline",),
                  ("iteration", "float32", "blocks"), ("iteration", "bfloat16", "blocks"),
                  ("eval",)]


def test_budget_skips_what_would_start_too_late(tmp_path, capsys):
  # --min_left above the budget: nothing starts, every part says why, the JSON is still written
  assert gpu_check.main(["--parts=eval,pipeline", "--budget=5", "--min_left=10",
                         f"--json={tmp_path / 'c.json'}"]) == 0
  rows = json.loads((tmp_path / "c.json").read_text())["rows"]
  assert [(r["part"], r["skipped"]) for r in rows] == [
      ("pipeline", "--budget=5 s spent"), ("eval", "--budget=5 s spent")]
  assert "| eval | not measured | --budget=5 s spent |" in capsys.readouterr().out


def test_a_mistyped_malloc_mode_stops_before_measuring(monkeypatch, capsys):
  monkeypatch.setenv("SEAT_JAX_MALLOC", "one_arna")
  assert gpu_check.main(["--parts=eval"]) == 2
  assert "SEAT_JAX_MALLOC='one_arna'" in capsys.readouterr().err


def test_error_of_a_dead_child_is_xlas_fatal_line_or_the_exception():
  abort = ("I1204 17:39:18.96 cuda_dnn.cc:442] Loaded cuDNN version 91900\n"
           "F1204 17:40:28.154734    2197 triton_tiling_propagation.cc:703] Check failed: "
           "subdim_size_accumulator == dim_size (8385 vs. 257) \n"
           "*** Check failure stack trace: ***\n    @     0x7f46  absl::LogMessage::Flush()\n")
  assert gpu_check.error_of(abort).startswith("F1204 17:40:28.154734")
  assert gpu_check.error_of(abort).endswith("(8385 vs. 257)")
  traceback = "Traceback (most recent call last):\n  File \"x.py\"\nValueError: bad size\n"
  assert gpu_check.error_of(traceback) == "ValueError: bad size"
  assert gpu_check.error_of("") == "no output"


def _trace():
  """A perfetto trace as jax.profiler writes it on a GPU: kernels on the device's stream
  threads, XLA's op summary on another thread of the device, host events elsewhere."""
  meta = [
      {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
      {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "name": "thread_name", "pid": 2, "tid": 7,
       "args": {"name": "Stream #13(Compute)"}},
      {"ph": "M", "name": "thread_name", "pid": 2, "tid": 8, "args": {"name": "XLA Ops"}},
      {"ph": "M", "name": "thread_name", "pid": 1, "tid": 9, "args": {"name": "python"}},
  ]
  kernels = [("sm90_xmma_fprop_implicit_gemm_bf16", 3000), ("sm90_xmma_dgrad_bf16", 1000),
             ("cutlass_80_wmma_tensorop_bf16_s161616gemm", 500), ("loop_multiply_fusion", 400),
             ("loop_multiply_fusion", 200), ("sm90_xmma_fprop_implicit_gemm_bf16", 3000)]
  events = [{"ph": "X", "pid": 2, "tid": 7, "name": n, "dur": d, "ts": i}
            for i, (n, d) in enumerate(kernels)]
  events += [{"ph": "X", "pid": 2, "tid": 8, "name": "convolution.12", "dur": 9999, "ts": 0},
             {"ph": "X", "pid": 1, "tid": 9, "name": "PjitFunction(step)", "dur": 99999, "ts": 0}]
  return {"traceEvents": meta + events}


def test_kernel_summary_counts_stream_kernels_per_step_by_kind():
  summary = gpu_check.kernel_summary(_trace(), steps=2, top=2)
  # 8100 us of stream kernels over 2 steps; XLA's op line and the host are not kernels
  assert summary["kernel_ms"] == 4.05
  assert summary["split_ms"] == {"convolution": 3.5, "matrix": 0.25, "other": 0.3}
  assert summary["top"] == [["sm90_xmma_fprop_implicit_gemm_bf16", 3.0, 1.0],
                            ["sm90_xmma_dgrad_bf16", 0.5, 0.5]]


def test_kernel_summary_of_a_trace_without_device_streams_says_so():
  trace = {"traceEvents": [e for e in _trace()["traceEvents"] if e["pid"] == 1]}
  assert gpu_check.kernel_summary(trace, steps=1) == {
      "note": "no device kernels in the trace (a CPU run)"}


def test_kernel_summary_names_the_device_lines_it_did_not_recognise():
  trace = {"traceEvents": [e for e in _trace()["traceEvents"] if e.get("tid") != 7]}
  assert gpu_check.kernel_summary(trace, steps=1) == {
      "note": "no 'Stream' thread on the device", "device_threads": ["XLA Ops"]}


def test_a_profiler_that_fails_loses_no_iteration_figure(monkeypatch):
  def no_profiler(step, steps):
    raise RuntimeError("CUPTI could not be loaded")
  monkeypatch.setattr(gpu_check, "_profiled", no_profiler)
  row = gpu_check.measure_iteration("float32", "none", {**gpu_check.SMOKE, "steps": 1})
  assert row["it_per_s"] > 0 and row["xla_peak_gib"] > 0
  assert row["profile"] == {"note": "profiler failed: RuntimeError: CUPTI could not be loaded"}


def test_set_overrides_the_iteration_config_and_the_table_names_it():
  sizes = {**gpu_check.SMOKE, "set": ["train.joint_pass=True", "adv.weight=0.5"]}
  config = gpu_check._config("bfloat16", "blocks", sizes)
  assert config.train.joint_pass is True and config.adv.weight == 0.5
  assert config.model.dtype == "bfloat16" and config.model.remat == "blocks"
  assert gpu_check._config("float32", "none", gpu_check.SMOKE).train.joint_pass is False
  header = gpu_check.table([], "cpu", sizes).splitlines()[0]
  assert header.endswith("batch 1 + 1, train.joint_pass=True, adv.weight=0.5."), header


def test_compared_variants_run_after_pytorch_and_are_labelled_against_the_default():
  jobs = gpu_check.jobs(["iteration", "torch", "eval"], ["float32", "bfloat16"], ["none"],
                        ["train.joint_pass=True"])
  assert jobs == [("iteration", "float32", "none"), ("iteration", "bfloat16", "none"),
                  ("torch", "float32"), ("torch", "bfloat16"),
                  ("iteration", "bfloat16", "none", "train.joint_pass=True"), ("eval",)]
  rows = [{"part": "iteration", "dtype": "bfloat16", "remat": "none", "it_per_s": 10.0,
           "ms": 100.0, "tflop": 4.7, "mfu": 0.05, "xla_peak_gib": 5.1, "device_peak_gib": 5.1,
           "compile_s": 88},
          {"part": "torch", "dtype": "bfloat16", "device": "cuda", "it_per_s": 8.0, "ms": 125.0,
           "device_peak_gib": 6.0},
          {"part": "iteration", "dtype": "bfloat16", "remat": "none", "it_per_s": 15.0,
           "ms": 66.7, "tflop": 4.7, "mfu": 0.07, "xla_peak_gib": 4.2, "device_peak_gib": 4.2,
           "compile_s": 76, "variant": ["train.joint_pass=True"]}]
  text = gpu_check.table(rows, "gpu", gpu_check.PAPER)
  assert "| JAX iteration, bfloat16, remat none, train.joint_pass=True | 15.0 it/s (66.7 ms) " \
         "| 1.50x the default's speed," in text
  assert "JAX / PyTorch speed 1.25x" in text  # the ratio is the default's, not the variant's


def test_a_variant_applies_its_override_and_says_so(monkeypatch):
  seen = {}
  monkeypatch.setattr(gpu_check, "measure_iteration",
                      lambda dtype, remat, sizes: seen.update(sizes) or {"part": "iteration"})
  row = gpu_check.run_job(("iteration", "bfloat16", "none", "train.joint_pass=True"),
                          {**gpu_check.SMOKE, "set": ["adv.weight=0.5"]})
  assert seen["set"] == ["adv.weight=0.5", "train.joint_pass=True"]
  assert row == {"part": "iteration", "variant": ["train.joint_pass=True"]}


_HLO = """HloModule step

%fused_add (p0: f32[4]) -> f32[4] {
  %p0 = f32[4]{0} parameter(0)
  ROOT %add = f32[4]{0} add(f32[4]{0} %p0, f32[4]{0} %p0)
}

ENTRY %main (a: f32[4], b: f32[4]) -> (f32[4], f32[4]) {
  %a = f32[4]{0} parameter(0)
  %b = f32[4]{0} parameter(1)
  %fusion = f32[4]{0} fusion(f32[4]{0} %a), kind=kLoop, calls=%fused_add
  %conv = (f32[4]{0}, u8[0]{0}) custom-call(f32[4]{0} %fusion), custom_call_target="__cudnn$convForward"
  %gte = f32[4]{0} get-tuple-element((f32[4]{0}, u8[0]{0}) %conv), index=0
  %view = f32[2,2]{1,0} bitcast(f32[4]{0} %gte)
  %copy = f32[4]{0} copy(f32[4]{0} %b)
  ROOT %out = (f32[4]{0}, f32[4]{0}) tuple(f32[4]{0} %gte, f32[4]{0} %copy)
}
"""


def test_kernel_launches_counts_the_entry_computations_work_only():
  """gpu_compile's kernels/it column: the fusion, the cuDNN call and the copy; not parameters,
  views, tuples, or the fused computation's own instructions."""
  gpu_compile = helpers.load_script("benchmarks/gpu_compile.py")
  assert gpu_compile.kernel_launches(_HLO) == 3
