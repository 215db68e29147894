# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: setup run test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

run: setup            ## serve with SQLite and ./data (override with DRIMBOX_* variables)
	$(VENV)/bin/drimbox serve $(if $(CONFIG),--config $(CONFIG))

test: setup           ## the whole suite (SQLite and PostgreSQL back-ends, real dcmtk peers)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info test-artifacts
