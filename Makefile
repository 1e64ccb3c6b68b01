# One task runner for people and CI. `make help` lists the targets.
# Everything installed lands under .local/ (git-ignored) or .venv/, so a fresh
# clone needs only python3, a JDK with Maven, and cargo, which the machine has.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
LOCAL := $(CURDIR)/.local
UV_VERSION := 0.13.8
UV := $(LOCAL)/bootstrap/bin/uv
VENV := $(CURDIR)/.venv
KAFKA_VERSION := $(shell sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' tools/kafka/pom.xml)
KAFKA_LIBS := $(LOCAL)/kafka/$(KAFKA_VERSION)/libs
SECANTUS_VERSION := 0.5.3-beta.196
SECANTUSD := $(LOCAL)/secantus/$(SECANTUS_VERSION)/bin/secantusd-rs
export UV_PROJECT_ENVIRONMENT := $(VENV)
export TELEMETRY_KAFKA_LIBS := $(KAFKA_LIBS)
export TELEMETRY_SECANTUSD := $(SECANTUSD)

.PHONY: help install up test test-unit bench lint clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(VENV)/.synced $(KAFKA_LIBS)/.fetched $(SECANTUSD) ## Install what is missing: virtualenv, Kafka jars, MongoDB wire server

up: install ## Run Kafka, MongoDB and the four services locally (Ctrl-C stops all)
	$(VENV)/bin/telemetry-stack up --data-dir $(LOCAL)/data

test: install ## Run the whole test suite against its own Kafka and MongoDB
	$(VENV)/bin/pytest

test-unit: $(VENV)/.synced ## Run the tests that need no server
	$(VENV)/bin/pytest -m "not integration and not e2e"

bench: install ## Measure every speed figure beside its ceiling (about 15 min); writes BENCHMARKS.md
	$(VENV)/bin/telemetry-bench

lint: $(VENV)/.synced ## ruff over the whole tree
	$(VENV)/bin/ruff check .

clean: ## Delete local data (Kafka and MongoDB state) and logs; installs are kept
	rm -rf $(LOCAL)/data

$(UV):
	$(PYTHON) -m venv $(LOCAL)/bootstrap
	$(LOCAL)/bootstrap/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) uv.lock pyproject.toml */pyproject.toml
	$(UV) sync --locked --all-packages --python $(PYTHON)
	touch $@

$(KAFKA_LIBS)/.fetched: tools/kafka/pom.xml
	mvn -q -B -f tools/kafka/pom.xml dependency:copy-dependencies \
	    -DincludeScope=runtime -DoutputDirectory=$(KAFKA_LIBS)
	touch $@

# The crate asks for rustc 1.98; it builds and runs with the machine's 1.95,
# hence --ignore-rust-version. --locked pins its dependency tree as published.
$(SECANTUSD):
	cargo install secantus-mdb --version $(SECANTUS_VERSION) --locked --ignore-rust-version \
	    --root $(LOCAL)/secantus/$(SECANTUS_VERSION)
