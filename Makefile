# Two commands for a fresh clone: `make demo` (the main job) and `make test` (the full test suite).
# Both create the CPU environment in .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --progress-bar off -c requirements/constraints.txt
# where torch comes from: empty for pip's configured index; https://download.pytorch.org/whl/cpu for the CPU build
TORCH_INDEX ?=
STAMP := $(VENV)/.installed
BUNDLE := bundles/multisite_segmentation

.PHONY: demo test env clean-env nnunet-demo federated-demo

env: $(STAMP)

$(STAMP): Makefile pyproject.toml requirements/constraints.txt requirements/nnunet.txt requirements/nnunet-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) -r requirements/nnunet.txt
	$(PIP) --no-deps -r requirements/nnunet-nodeps.txt
	$(PIP) -e ".[test,federated]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m monai.bundle run --config_file $(BUNDLE)/configs/experiment.json --bundle_root $(BUNDLE)

# nnU-Net: the embedded sites as one nnU-Net dataset each, planned once, then cyclic weight transfer, fine-tuning and
# replay across them with nnU-Net's own training loop (short schedules for a CPU)
NNUNET := outputs/nnunet
NNUNET_CLI := nnUNet_def_n_proc=2 nnUNet_n_proc_DA=2 $(PY) -m monai_continual.nnunet --raw $(NNUNET)/raw --preprocessed $(NNUNET)/preprocessed --results $(NNUNET)/results
NNUNET_SITES := 501 502 503 504
NNUNET_SCHEDULE := --epochs 2 --iterations-per-epoch 15 --val-iterations-per-epoch 5 --disable-tta

nnunet-demo: $(STAMP)
	$(PY) -m monai_continual make-sites $(NNUNET)/sites --shape 24,28,24
	$(NNUNET_CLI) export-sites $(NNUNET)/sites/datalist.json --first-id 501
	$(NNUNET_CLI) plan $(NNUNET_SITES)
	$(NNUNET_CLI) sites cyclic_weight_transfer $(NNUNET_SITES) -o $(NNUNET)/runs/cyclic_weight_transfer --rounds 2 $(NNUNET_SCHEDULE)
	$(NNUNET_CLI) sites fine_tuning $(NNUNET_SITES) -o $(NNUNET)/runs/fine_tuning --epochs 4 --iterations-per-epoch 15 --val-iterations-per-epoch 5 --disable-tta
	$(NNUNET_CLI) sites replay $(NNUNET_SITES) -o $(NNUNET)/runs/replay --replay-capacity 3 --epochs 4 --iterations-per-epoch 15 --val-iterations-per-epoch 5 --disable-tta

# NVIDIA FLARE in POC mode: the embedded sites as separate client processes with mutual TLS on this machine, running
# cyclic weight transfer and DWC, each followed by its table (outputs in $(BUNDLE)/outputs/federated)
FEDERATED := $(PY) -m monai.bundle run --config_file $(BUNDLE)/configs/federated.json --bundle_root $(BUNDLE) --engine poc --epochs 6

federated-demo: $(STAMP)
	$(FEDERATED) --strategy cyclic_weight_transfer --strategy_options "{'cycles': 2, 'epochs_per_visit': 3}"
	$(FEDERATED) --strategy dwc

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

clean-env:
	rm -rf $(VENV)
