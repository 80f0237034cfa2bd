# The two commands of the README. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The whole test suite, two workers (one per core of the reference 2-core machine).
test: $(STAMP)
	$(PY) -m pytest -n 2 tests

# The main job on the built-in synthetic domain shift (see README "The demo").
demo: $(STAMP)
	$(PY) -m seat_jax.demo --workdir=demo_workdir

clean:
	rm -rf $(VENV) demo_workdir
