"""The documentation site builds as `make docs` builds it, and its generated pages are current.

`make docs` checks docs/configuration.md (tests/test_config_reference.py does too) and
docs/index.md, then runs `mkdocs build --strict`: any warning (a broken link, a page missing from
the nav) fails. docs/use-a-model.md may be absent: its nav entry is allowed to point nowhere
(mkdocs.yml, validation.nav.not_found).
"""

import os
import pathlib
import re
import subprocess
import sys

import helpers

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_make_docs_checks_the_generated_pages_and_builds_strictly():
  recipe = (REPO / "Makefile").read_text().split("\ndocs:")[1].split("\n\n")[0]
  assert "tools/config_reference.py --check" in recipe
  assert "tools/docs_index.py --check" in recipe
  assert "-m mkdocs build --strict" in recipe


def test_the_site_builds_strictly(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  for page in ("index.html", "configuration/index.html", "reproducing-seat/index.html"):
    assert (tmp_path / "site" / page).exists(), page


def test_the_home_page_is_the_readme():
  tool = helpers.load_script("tools/docs_index.py")
  assert (REPO / "docs" / "index.md").read_text() == tool.render(
      (REPO / "README.md").read_text()), "docs/index.md is stale: run python tools/docs_index.py"


def test_every_page_is_in_the_nav():
  nav = set(re.findall(r"([\w-]+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), re.M))
  pages = {p.name for p in (REPO / "docs").glob("*.md")}
  assert pages <= nav, f"pages missing from mkdocs.yml's nav: {sorted(pages - nav)}"
