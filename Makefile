# homefeed: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch; any torch >= 2.4 works (pass TORCH_SPEC=torch to take your platform's default).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
DATASET ?= synthetic
SIZE ?= tiny

.PHONY: help setup redis-server promtool up down status apply test test-containers demo clean

help:
	@echo "make setup   venv + project + dev deps (+ redis-server and promtool via apt-get when root)"
	@echo "make up      start local redis-server and Kafka-protocol broker (homefeed stack up)"
	@echo "make down    stop them"
	@echo "make apply   feast apply the feature repo"
	@echo "make test    run the test suite (starts and stops its own services on free ports)"
	@echo "make test-containers  build the images, run the compose stack and the bento image on a real engine"
	@echo "make demo    run the main job end to end on a small world"

setup: $(VENV)/.installed redis-server promtool

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

redis-server:
	@if command -v redis-server >/dev/null 2>&1; then \
		true; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing redis-server with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	else \
		echo "redis-server is missing: install it (sudo apt-get install -y redis-server, or brew install redis)"; \
		echo "or set REDIS_URL to an existing Redis"; \
		exit 1; \
	fi

# promtool (Debian's prometheus package) checks monitoring/'s alert rules in the tests; optional:
# without it (and not root) those tests are skipped. Only the tool is wanted: the package's
# server is not left running.
promtool:
	@if command -v promtool >/dev/null 2>&1; then \
		true; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing promtool (prometheus) with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
		systemctl disable --now prometheus >/dev/null 2>&1 || true; \
	else \
		echo "promtool is missing: the alert-rule tests will be skipped (sudo apt-get install prometheus)"; \
	fi

up: setup
	$(BIN)/homefeed stack up

down:
	-$(BIN)/homefeed demo --stop
	$(BIN)/homefeed stack down

status:
	$(BIN)/homefeed stack status

apply: up
	$(BIN)/homefeed feast apply

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Also part of `make test` (tests/test_containers.py) where it can run: as root, or with an engine.
test-containers: setup
	$(BIN)/python tests/containers/run.py

demo: setup
	$(BIN)/homefeed demo --dataset $(DATASET) --size $(SIZE)

clean: down
	rm -rf .homefeed feature_repo/data bento/state
