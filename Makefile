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
# Extras `make setup` installs: dev (tests) and spark (the distributed offline store and its
# parity test). EXTRAS=dev skips pyspark (and then no JDK is needed).
EXTRAS ?= dev,spark

.PHONY: help setup redis-server promtool java chromium up down status apply lint test test-containers demo clean

help:
	@echo "make setup   venv + project + dev/spark deps (+ redis-server, promtool, chromium, a JDK via apt-get when root)"
	@echo "make up      start local redis-server and Kafka-protocol broker (homefeed stack up)"
	@echo "make down    stop them"
	@echo "make apply   feast apply the feature repo"
	@echo "make test    run the test suite (starts and stops its own services on free ports)"
	@echo "make test-containers  build the images, run the compose stack and the bento image on a real engine"
	@echo "make demo    run the main job end to end on a small world (DATASET=movielens|kuairand for real data)"

setup: $(VENV)/.installed redis-server promtool java chromium

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
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

# A Java runtime for the spark offline store (pyspark starts a JVM); only with the spark extra.
java:
	@if [[ ",$(EXTRAS)," != *",spark,"* ]] || command -v java >/dev/null 2>&1 || [ -n "$$JAVA_HOME" ]; then \
		true; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing a headless JDK (default-jre-headless) with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends default-jre-headless >/dev/null; \
	else \
		echo "java is missing: the spark offline store needs a Java 17+ runtime (sudo apt-get install default-jre-headless, or set JAVA_HOME)"; \
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

# Debian's chromium for the feed page's browser test (Playwright drives it through executable_path;
# `playwright install` downloads are not used). Optional: without it (and not root) that test is skipped.
chromium:
	@if command -v chromium >/dev/null 2>&1; then \
		true; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else \
		echo "chromium is missing: the feed page's browser test will be skipped (sudo apt-get install chromium)"; \
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

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff, configured in pyproject.toml ([tool.ruff]); `make test` runs it first
lint: setup
	$(BIN)/ruff check src tests bento scripts feature_repo training

# Also part of `make test` (tests/test_containers.py) where it can run: as root, or with an engine.
test-containers: setup
	$(BIN)/python tests/containers/run.py

# Real datasets (DATASET=movielens|kuairand): DATA=DIR, or KUAIRAND=DIR / MOVIELENS=DIR as
# scripts/compare.sh takes them, names the unpacked files; unset, the demo runs
# `homefeed world fetch` into .homefeed/data/ on its first run.
KUAIRAND ?=
MOVIELENS ?=
DATA ?= $(if $(filter kuairand,$(DATASET)),$(KUAIRAND),$(if $(filter movielens,$(DATASET)),$(MOVIELENS)))

demo: setup
	$(BIN)/homefeed demo --dataset $(DATASET) --size $(SIZE) $(if $(DATA),--data "$(DATA)")

clean: down
	rm -rf .homefeed feature_repo/data bento/state
