# Two commands for a newcomer: `make run` (install, then the whole pipeline) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

# Flyte's local cache records absolute paths of task outputs: keep them in the project, not in /tmp.
export FLYTE_SDK_LOCAL_SANDBOX ?= $(CURDIR)/.flyte/sandbox
# No dependency reports home (sslflow/telemetry.py, which importing sslflow also sets).
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := False
export ORT_DISABLE_TELEMETRY := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := true

.PHONY: run test install data orthanc clean-cache

run: install data
	@start=$$(date +%s); \
	$(BIN)/pyflyte run workflows/pipeline.py ssl_pipeline; status=$$?; \
	echo "pipeline wall time: $$(( $$(date +%s) - start )) s"; exit $$status

test: install data orthanc
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/pytest -q

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check pip==26.3
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[test]'
	touch $@

# Fashion-MNIST ships as a Debian package; install it when missing and apt is usable.
data:
	@if [ -f "$(FASHION_MNIST)" ] || [ -n "$$SSLFLOW_FASHION_MNIST_DIR" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" \
		     "or set SSLFLOW_FASHION_MNIST_DIR to a folder holding its four idx .gz files." >&2; exit 1; \
	fi

# Orthanc and its DICOMweb plugin (Debian packages) for the DICOMweb source's tests, which start their own server
# on a loopback port (never the system service, stopped and disabled once installed); installed when missing and apt
# is usable, else those tests skip, saying so.
orthanc:
	@if command -v Orthanc >/dev/null && ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* >/dev/null 2>&1; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null; } || \
		echo "orthanc could not be installed: the DICOMweb tests will be skipped" >&2; \
		if command -v systemctl >/dev/null; then systemctl disable --now orthanc >/dev/null 2>&1 || true; fi; \
	else \
		echo "Orthanc is missing (sudo apt-get install orthanc orthanc-dicomweb): the DICOMweb tests will be skipped" >&2; \
	fi

clean-cache:
	rm -rf .flyte ~/.flyte/local-cache

# Benchmark-only extras, outside the project venv: lightly without its training-framework dependencies
# (vs_lightly.py) and kornia (augment_speed.py). tests/test_benchmark_provenance.py checks that every
# module a benchmark imports is in the venv or here.
.PHONY: bench-deps
bench-deps: install
	$(BIN)/python -m pip install -q --no-deps --target .bench-site lightly==1.6.0 lightning-utilities==0.15.3 kornia==0.9.0 kornia-rs==0.2.0
