# The two commands of the README. Both create .venv on first use; `make demo` installs the
# package alone, `make test` adds the test extra (PyTorch as a reference, pytest, mkdocs).
# `make docs` builds the documentation site (mkdocs.yml) into site/, failing on any warning.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BASE_STAMP := $(VENV)/.installed-base
TEST_STAMP := $(VENV)/.installed-test
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: install test demo docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(BASE_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml $(BASE_STAMP)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(DOCS_STAMP): pyproject.toml $(BASE_STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $@

install: $(BASE_STAMP)

# The whole test suite, two workers (one per core of the reference 2-core machine); a module
# marked with an xdist_group runs on one worker, so its programs compile once.
test: $(TEST_STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup tests

# The main job on the built-in synthetic data (docs/demo.md).
demo: $(BASE_STAMP)
	$(PY) -m seat_jax.demo --workdir=demo_workdir

# The site, strictly: the generated pages must be current, and any mkdocs warning fails.
docs: $(DOCS_STAMP)
	$(PY) tools/config_reference.py --check
	$(PY) tools/docs_index.py --check
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) demo_workdir site
