# nhi-operator developer entry points. `make run` and `make test` work from a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
CP_BIN = $(shell bash hack/build-controlplane.sh 2>/dev/null | tail -n1)
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $@

.PHONY: venv
venv: $(STAMP) ## create the virtualenv and install the project with its test extra

.PHONY: system-deps
system-deps: ## install the Debian tools the tests use (promtool, lua) when missing
	@bash hack/system-deps.sh

.PHONY: controlplane
controlplane: ## build or reuse etcd, kube-apiserver, kube-controller-manager, kubectl, helm
	@bash hack/build-controlplane.sh

.PHONY: run
run: venv controlplane ## start the local control plane, install CRDs and samples, run the operator
	@$(PY) -m nhi.testenv run

.PHONY: lint
lint: venv ## ruff and import-linter
	$(VENV)/bin/ruff check operator tests $(wildcard bench)
	$(VENV)/bin/ruff format --check operator tests $(wildcard bench)
	$(VENV)/bin/lint-imports

.PHONY: typecheck
typecheck: venv ## mypy --strict on the nhi package
	$(VENV)/bin/mypy

.PHONY: unit
unit: venv system-deps ## pure unit tests
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

.PHONY: integration
integration: venv controlplane ## tests against the real local control plane
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

.PHONY: e2e
e2e: venv controlplane system-deps ## what a user does: helm, kubectl, prometheus, the CLI
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

.PHONY: test
test: venv system-deps controlplane lint typecheck ## everything CI runs: lint, types, unit, integration, e2e
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: bench
bench: venv controlplane ## benchmarks against the local control plane; writes bench/RESULTS.md
	$(PY) -m bench $(BENCH_ARGS)

.PHONY: chart-lint
chart-lint: controlplane ## helm lint --strict
	$(CP_BIN)/helm lint --strict charts/nhi-operator

.PHONY: manifests
manifests: controlplane ## render the kustomize base
	$(CP_BIN)/kubectl kustomize manifests/base

.PHONY: image
image: ## build the container image (needs a Docker engine)
	docker build -t nhi-operator:dev .

.PHONY: clean
clean: ## remove the virtualenv and build output (the control-plane cache stays)
	rm -rf $(VENV) build dist .run .pytest_cache .mypy_cache .ruff_cache
