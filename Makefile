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
# Deployment checks (tests/deploy): kustomize from the Go module proxy, checkov
# in its own virtualenv, the CRD validator from npm, promtool and docker-compose
# from Debian.
KUSTOMIZE_VERSION := v5.5.0
KUSTOMIZE := $(LOCAL)/go/bin/kustomize
CHECKOV_VENV := $(LOCAL)/checkov
CRD_VALIDATE := k8s/crd-validate
DEBIAN_TOOLS := /usr/bin/promtool /usr/bin/prometheus /usr/bin/docker-compose
# The web dashboard's tests drive Debian's Chromium through Playwright (whose
# own browser download is not used).
CHROMIUM := /usr/bin/chromium
export TELEMETRY_CHROMIUM := $(CHROMIUM)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
export TELEMETRY_KUSTOMIZE := $(KUSTOMIZE)
export TELEMETRY_CHECKOV := $(CHECKOV_VENV)/bin/checkov

.PHONY: help install deploy-tools dockerfiles up test test-unit bench chaos lint clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

install: $(VENV)/.synced $(KAFKA_LIBS)/.fetched $(SECANTUSD) ## Install what is missing: virtualenv, Kafka jars, MongoDB wire server

up: install ## Run Kafka, MongoDB and the four services locally (Ctrl-C stops all)
	$(VENV)/bin/telemetry-stack up --data-dir $(LOCAL)/data

deploy-tools: $(VENV)/.deploy-synced $(KUSTOMIZE) $(CHECKOV_VENV)/.synced $(CRD_VALIDATE)/node_modules/.installed $(DEBIAN_TOOLS) ## Install what checks the Dockerfiles, compose and k8s files

dockerfiles: $(VENV)/.synced ## Rewrite the five Dockerfiles from their one template
	$(VENV)/bin/python -m telemetry_tools.dockerfiles

test: install deploy-tools $(CHROMIUM) lint ## Lint, then run the whole test suite against its own Kafka and MongoDB
	$(VENV)/bin/pytest

test-unit: $(VENV)/.synced ## Run the tests that need no server
	$(VENV)/bin/pytest -m "not integration and not e2e and not deploy" --ignore=tests/deploy

bench: install ## Measure every speed figure beside its ceiling (20 min; the first run 50); writes BENCHMARKS.md
	$(VENV)/bin/telemetry-bench

chaos: install ## Break things under load (kills, Kafka and MongoDB outages, poison) and check nothing is lost; writes RELIABILITY.md
	$(VENV)/bin/telemetry-chaos

lint: $(VENV)/.synced ## ruff over the whole tree, mypy (strict) over the product's packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean: ## Delete local data (Kafka and MongoDB state, the bench's store) and logs; installs are kept
	rm -rf $(LOCAL)/data $(LOCAL)/bench

$(UV):
	$(PYTHON) -m venv $(LOCAL)/bootstrap
	$(LOCAL)/bootstrap/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) uv.lock pyproject.toml */pyproject.toml
	$(UV) sync --locked --all-packages --python $(PYTHON)
	touch $@

# Re-run after every plain sync, which removes the deploy group's packages.
$(VENV)/.deploy-synced: $(VENV)/.synced
	$(UV) sync --locked --all-packages --group deploy
	touch $@

$(KUSTOMIZE):
	GOBIN=$(LOCAL)/go/bin GOFLAGS=-modcacherw go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

$(CHECKOV_VENV)/.synced: $(UV) k8s/checkov/uv.lock k8s/checkov/pyproject.toml
	UV_PROJECT_ENVIRONMENT=$(CHECKOV_VENV) $(UV) sync --locked --project k8s/checkov --python $(PYTHON)
	touch $@

$(CRD_VALIDATE)/node_modules/.installed: $(CRD_VALIDATE)/package-lock.json
	npm ci --prefix $(CRD_VALIDATE) --no-audit --no-fund
	touch $@

# No recommends: docker-compose would bring a Docker engine, prometheus a node exporter.
$(DEBIAN_TOOLS):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus docker-compose

# A font of its own: without recommends, a bare system would render boxes.
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core

$(KAFKA_LIBS)/.fetched: tools/kafka/pom.xml
	mvn -q -B -f tools/kafka/pom.xml dependency:copy-dependencies \
	    -DincludeScope=runtime -DoutputDirectory=$(KAFKA_LIBS)
	touch $@

# The crate asks for rustc 1.98; it builds and runs with the machine's 1.95,
# hence --ignore-rust-version. --locked pins its dependency tree as published.
$(SECANTUSD):
	cargo install secantus-mdb --version $(SECANTUS_VERSION) --locked --ignore-rust-version \
	    --root $(LOCAL)/secantus/$(SECANTUS_VERSION)
