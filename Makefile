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

.PHONY: setup viewer run test lint clean

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
	rm -rf $(VENV) build *.egg-info test-artifacts .cache
