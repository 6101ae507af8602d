# The two commands of README.md:
#   make mnist   — the MNIST pipeline on real Fashion-MNIST with the embedded defaults
#   make test    — the test suite
# Each bootstraps what it needs: Debian data packages, the virtual environment, the package.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_MNIST := /usr/share/datasets/fashion-mnist
# Debian packages the tests read: real Fashion-MNIST, real photographs for ImageNet-like corpora,
# and chromium for the headless checks of the Prefect and MLflow UIs.
TEST_DEBS := dataset-fashion-mnist mate-backgrounds chromium
EPOCHS ?= 6

.PHONY: mnist test venv data

mnist: venv $(FASHION_MNIST)
	$(BIN)/visionflow pipeline mnist --source $(FASHION_MNIST) --epochs $(EPOCHS)

test: venv data
	$(BIN)/python -m pytest -q

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,cluster]'
	touch $@

$(FASHION_MNIST):
	$(SUDO) apt-get install -y --no-install-recommends dataset-fashion-mnist || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends dataset-fashion-mnist; }

data:
	@missing=$$(for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get install -y --no-install-recommends $$missing || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $$missing; }; \
	fi
