"""The suite's guard against lost xdist groups (tests/conftest.py), on made items."""

import types

import pytest

import conftest


class _Item:
  def __init__(self, nodeid, group=None):
    self.nodeid, self.stash = nodeid, {}
    self._mark = pytest.mark.xdist_group(group).mark if group else None

  def get_closest_marker(self, name):
    return self._mark if name == "xdist_group" else None


def _config(loadgroup):
  return types.SimpleNamespace(option=types.SimpleNamespace(loadgroup=loadgroup))


def test_a_grouped_test_without_its_suffix_fails_at_setup_with_the_fix():
  # "...test_g" ends with the name but not with "@g": only the suffix counts.
  lost, kept, plain = (_Item("t.py::test_g", "g"), _Item("t.py::b@g", "g"), _Item("t.py::c"))
  conftest.pytest_collection_modifyitems(_config(True), [lost, kept, plain])
  conftest.pytest_runtest_setup(kept)
  conftest.pytest_runtest_setup(plain)
  with pytest.raises(pytest.fail.Exception, match=r"did not group.*'g'.*pip install -e"):
    conftest.pytest_runtest_setup(lost)


def test_without_loadgroup_nothing_is_checked():
  item = _Item("t.py::a", "g")
  conftest.pytest_collection_modifyitems(_config(False), [item])
  conftest.pytest_runtest_setup(item)
