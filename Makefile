# Courier: `make dev` serves everything on http://127.0.0.1:8080; `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
# uv must use this machine's Python: it cannot download a toolchain here.
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)
UV := $(PYTHON) -m uv
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
# Go modules of our own that `make lint` formats and vets: the load generator, and the metrics pipeline's pod-targets.
GO_DIRS := bench/loadgen infra/images/metrics/pod-targets

.PHONY: help setup dev test test-unit test-system test-browser test-integration lint fmt typecheck check \
	browser-deps clean infra-up infra-down up down kube-up kube-down operator-local image kind-up kind-down \
	chart-lint e2e bench fuzz

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv==$(UV_VERSION)
	$(UV) sync --frozen --quiet
	@touch $@

setup: $(VENV)/.synced ## create .venv from uv.lock

dev: setup ## run all services in one process on http://127.0.0.1:8080 (data in ./.courier)
	$(BIN)/courier dev

browser-deps: ## install headless Chromium (Debian package) for the browser tests
	@scripts/ensure-chromium

# Each tier in its own pytest run: the browser tier drives Chromium through Playwright's sync API,
# whose loop must not share a process with the asyncio tests.
test: setup browser-deps ## every test: unit, integration, system (dev, make up, faults), k8s, browser, e2e (kind)
	$(BIN)/pytest -q tests/unit
	$(BIN)/pytest -q tests/integration
	$(BIN)/pytest -q tests/system
	$(BIN)/pytest -q tests/k8s
	$(BIN)/pytest -q tests/browser
	$(BIN)/pytest -q tests/e2e

test-unit: setup ## unit tests only
	$(BIN)/pytest -q tests/unit

test-system: setup ## PROTOCOL.md scenarios against courier dev and make up, and the fault tests
	$(BIN)/pytest -q tests/system

fuzz: setup ## a long fuzzing run (API by schemathesis, WebSocket frames) against courier dev; COURIER_FUZZ_SEED to repeat one
	COURIER_FUZZ_EXAMPLES=$${COURIER_FUZZ_EXAMPLES:-500} COURIER_FUZZ_FRAMES=$${COURIER_FUZZ_FRAMES:-30000} \
	COURIER_FUZZ_SEED=$${COURIER_FUZZ_SEED:-$$(date +%s)} $(BIN)/pytest -q tests/system/test_fuzz_api.py tests/system/test_fuzz_ws.py

test-browser: setup browser-deps ## the web page in headless Chromium
	$(BIN)/pytest -q tests/browser

infra-up: ## start Redis, MariaDB, PostgreSQL, Kafka and MinIO on loopback (installed and cached on first use)
	infra/courier-infra up

infra-down: ## stop the servers infra-up started
	infra/courier-infra down

up: setup ## the distributed Courier: infra, migrations, 7 services (2 delivery nodes), gateway on :8080
	$(BIN)/python -m tools.stack up

down: setup ## stop everything make up started, servers included
	$(BIN)/python -m tools.stack down

test-integration: setup ## adapters and harness against the real servers (starts them)
	$(BIN)/pytest -q tests/integration

kube-up: ## a real Kubernetes control plane on loopback (etcd, apiserver, controllers, kwok); kubeconfig in .courier/
	infra/kube/courier-kube up

kube-down: ## stop the control plane kube-up started
	infra/kube/courier-kube down

operator-local: setup ## run the operator on this machine against .courier/kubeconfig (after make kube-up)
	KUBECONFIG=$(CURDIR)/.courier/kubeconfig $$(infra/kube/courier-kube env | sed -n 's/^export COURIER_KUBECTL=//p') \
		apply --server-side -f crds/imcluster.yaml
	KUBECONFIG=$(CURDIR)/.courier/kubeconfig $(BIN)/courier-operator --all-namespaces --default-image $(IMAGE)

IMAGE ?= courier:0.1.0
image: ## build the one image of every service and the operator on a local Debian base (starts dockerd if needed)
	infra/images/courier-images courier $(IMAGE)

kind-up: setup ## Courier on a local kind cluster: images built here, chart, sample IMCluster; gateway on :30080
	infra/images/courier-kind up

kind-down: ## delete the cluster kind-up made
	infra/images/courier-kind down

chart-lint: setup ## helm lint and strict schema validation of the rendered chart and the samples
	$(BIN)/pytest -q tests/unit/chart

e2e: setup ## a kind cluster of real pods: images built here, helm install, the sample, protocol, rollouts
	$(BIN)/pytest -q tests/e2e

# Every scenario, short, with what the performance targets need (docs/performance.md): throughput at 20, 500 and
# 1,000 msg/s and on to the highest sustainable rate, a group of 10,000 members; the targets' table at the end.
bench: setup ## every load scenario against courier dev and make up: one table, and which targets the run met
	$(BIN)/python -m bench all --short --dev --up --rates 20,500,1000 --find-max --members 10000 --group-messages 5

lint: setup ## ruff lint and format check, import contracts, gofmt and go vet of our Go modules
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	@test -z "$$(gofmt -l $(GO_DIRS))" || { gofmt -l $(GO_DIRS); echo "gofmt: format $(GO_DIRS)"; exit 1; }
	for dir in $(GO_DIRS); do (cd $$dir && GOFLAGS=-mod=readonly go vet ./...) || exit 1; done

fmt: setup ## format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: setup ## mypy --strict
	$(BIN)/mypy

check: lint typecheck test ## everything CI runs

clean: ## remove the virtualenv and local data
	rm -rf $(VENV) .courier .mypy_cache .ruff_cache .pytest_cache
