"""docs/configuration.md is what tools/config_reference.py writes from the code, and every
config key has a meaning there."""

import pathlib

import helpers

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tool():
  return helpers.load_script("tools/config_reference.py")


def test_every_config_key_has_a_meaning_and_the_page_is_current():
  tool = _tool()
  page, undocumented = tool.render()
  assert not undocumented, f"config keys without a comment in the code: {undocumented}"
  assert (REPO / "docs" / "configuration.md").read_text() == page, (
      "docs/configuration.md is stale: run `python tools/config_reference.py`")


def test_the_page_lists_every_key_once():
  from seat_jax import config_defaults  # pylint: disable=g-import-not-at-top
  page = (REPO / "docs" / "configuration.md").read_text()
  keys = list(_tool()._leaves(config_defaults.get_config()))  # pylint: disable=protected-access
  for key, _ in keys:
    assert page.count(f"| `{key}` |") == 1, key
  assert len(keys) > 100
