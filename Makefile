# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

# The OHIF viewer served at /viewer: @ohif/app's prebuilt dist/ from the npm registry, never
# committed. 3.13 needs Node 24; the pinned tarball's SHA-256 is checked after `npm pack`.
OHIF_VERSION = 3.12.10
OHIF_SHA256  = fbabd410be33e5b9898931b725229b9da9553aac339914b5c29796d3aa5d4b2d
OHIF_DIR     = .cache/ohif
OHIF_STAMP   = $(OHIF_DIR)/.installed-$(OHIF_VERSION)

# Python dependencies: requirements.lock pins every package (runtime and test extra) that
# `make setup` installs, exactly; pyproject.toml only bounds them. `make lock` re-resolves it
# with uv (installed in a throwaway venv under .cache), keeping the current pins where they
# still fit; `make lock UPGRADE=1` moves every pin to the newest release within the bounds.
LOCK      = requirements.lock
LOCK_VENV = .cache/lock-venv

# The suite runs on several pytest-xdist workers: most tests wait on child processes (gateways,
# simulators, dcmtk, Orthanc), so more workers than cores pays. Tests sharing a module-scoped
# fixture stay on one worker (tests/conftest.py). `make test PYTEST_WORKERS=0` runs serially.
PYTEST_WORKERS ?= 4
PYTEST_XDIST    = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadgroup)

.PHONY: setup viewer run sandbox test lint lock samples conformance clean

setup: $(STAMP) viewer

viewer: $(OHIF_STAMP)   ## fetch the OHIF viewer into .cache/ohif/dist (needs npm)

$(OHIF_STAMP):
	rm -rf $(OHIF_DIR) && mkdir -p $(OHIF_DIR)/tmp
	cd $(OHIF_DIR)/tmp && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null
	echo "$(OHIF_SHA256)  $(OHIF_DIR)/tmp/ohif-app-$(OHIF_VERSION).tgz" | sha256sum -c --quiet
	tar -xzf $(OHIF_DIR)/tmp/ohif-app-$(OHIF_VERSION).tgz -C $(OHIF_DIR)/tmp package/dist
	mv $(OHIF_DIR)/tmp/package/dist $(OHIF_DIR)/dist
	rm -rf $(OHIF_DIR)/tmp
	touch $@

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

lock:                 ## re-resolve requirements.lock from pyproject.toml (UPGRADE=1: newest pins)
	[ -x $(LOCK_VENV)/bin/uv ] || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q uv; }
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml --extra test --python-version 3.11 \
		--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) -q -o $(LOCK)

samples:              ## refresh tests/data/drim-m-samples from ../shared/drim-m-samples
	$(PYTHON) tests/data/refresh_samples.py

conformance:          ## regenerate the generated tables of docs/conformance-statement.md
	$(PY) docs/tools/conformance_tables.py

run: setup            ## serve with SQLite and ./data (override with DRIMBOX_* variables)
	$(VENV)/bin/drimbox serve $(if $(CONFIG),--config $(CONFIG))

sandbox: setup        ## the whole chain on loopback: Source, Consumer, dmp-sim, psc-sim, Orthanc (docs/sandbox.md)
	$(VENV)/bin/drimbox sandbox $(if $(BASE_PORT),--base-port $(BASE_PORT)) $(if $(DIR),--dir $(DIR))

test: setup           ## the whole suite (SQLite and PostgreSQL back-ends, real dcmtk peers)
	$(PY) -m pytest $(PYTEST_XDIST) --durations=20 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info test-artifacts .cache
