"""The README's two commands exist as Makefile targets and CI runs the README's test command."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def _readme_make_commands():
  readme = (REPO / "README.md").read_text()
  blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
  return {m for block in blocks for m in re.findall(r"^make (\w+)", block, flags=re.M)}


def _makefile_targets():
  return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))


def test_readme_gives_make_demo_and_make_test():
  assert {"demo", "test"} <= _readme_make_commands()


def test_every_make_command_in_the_readme_is_a_makefile_target():
  missing = _readme_make_commands() - _makefile_targets()
  assert not missing, f"README uses make targets the Makefile lacks: {missing}"


def test_ci_runs_the_readme_test_command():
  assert re.search(r"^make test$", (REPO / ".ci" / "run").read_text(), flags=re.M)


def test_readme_stays_short():
  """The README gives the essentials; everything else lives in docs/."""
  assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_make_demo_runs_the_demo_module():
  makefile = (REPO / "Makefile").read_text()
  demo_recipe = makefile.split("\ndemo:")[1].split("\n\n")[0]
  assert "-m seat_jax.demo" in demo_recipe
