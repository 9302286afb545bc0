# Two commands for a fresh clone: `make demo` (the main job) and `make test` (the full test suite).
# Both create the CPU environment in .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --progress-bar off -c requirements/constraints.txt
STAMP := $(VENV)/.installed
BUNDLE := bundles/multisite_segmentation

.PHONY: demo test env clean-env

env: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt requirements/nnunet.txt requirements/nnunet-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -r requirements/nnunet.txt
	$(PIP) --no-deps -r requirements/nnunet-nodeps.txt
	$(PIP) -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m monai.bundle run --config_file $(BUNDLE)/configs/experiment.json --bundle_root $(BUNDLE)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

clean-env:
	rm -rf $(VENV)
