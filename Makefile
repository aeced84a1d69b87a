# `make demo`: create/refresh .venv, install ssl-bench, run the main job on the embedded default.
# `make test`: the same install, then the test suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ssl-bench-installed

.PHONY: install demo test test-slow

# Re-installs only when pyproject.toml changes: a second `make test` does not touch torch.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/ssl-bench demo

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

.PHONY: openmmlab test-openmmlab

# Optional: the OpenMMLab backends of the segmentation and detection protocols.
openmmlab: install
	scripts/install_openmmlab.sh $(BIN)/python

test-openmmlab: openmmlab
	SSL_BENCH_REQUIRE_OPENMMLAB=1 $(BIN)/python -m pytest -q
