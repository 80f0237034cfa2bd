"""Runs the commands tests/test_docs_commands.py planned, in order, in this one process.

  python tests/docs_commands_runner.py PLAN.json RESULTS.jsonl

`seat_jax.main`, `prepare_data` and `convert` run in-process through their `main(argv)`, so
every command shares one process's compiled programs; other commands, and entries marked
`isolated` (whose whole output is checked), run as subprocesses. Its own
process because `seat_jax.main` and `seat_jax.demo` define the same absl flag (`--workdir`) and
the test suite imports the demo. One JSON line per command: its exit code, seconds and output.
Stops at the first command whose exit code is not the one planned.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import time


def main(plan_path: str, results_path: str) -> int:
  with open(plan_path) as f:
    plan = json.load(f)
  from seat_jax import convert  # pylint: disable=g-import-not-at-top
  from seat_jax import main as seat_main  # pylint: disable=g-import-not-at-top
  from seat_jax import prepare_data  # pylint: disable=g-import-not-at-top
  in_process = {"seat_jax.main": seat_main.main, "seat_jax.prepare_data": prepare_data.main,
                "seat_jax.convert": convert.main}
  os.chdir(plan["root"])
  with open(results_path, "w") as results:
    for entry in plan["commands"]:
      words = entry["argv"]
      start = time.perf_counter()
      if words[:2] == ["python", "-m"] and words[2] in in_process and not entry.get("isolated"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
          code = in_process[words[2]](words[3:])
        printed = out.getvalue()
      else:
        argv = [sys.executable, *words[1:]] if words[0] == "python" else words
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        code, printed = done.returncode, done.stdout + done.stderr
      results.write(json.dumps({**entry, "code": code, "seconds": time.perf_counter() - start,
                                "printed": printed[-6000:]}) + "\n")
      results.flush()
      if code != entry.get("expect", 0):
        return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(*sys.argv[1:]))
