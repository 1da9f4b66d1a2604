# Shortcuts for the commands of the README. Every target runs a script of the repo, so nothing here is
# needed: `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
RUFF := $(VENV)/bin/ruff

.PHONY: help setup assets run stack-up stack-down stack-status test lint format bench screenshot

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: ## .venv with requirements-dev.txt, and the front-end assets (make assets)
	source scripts/bootstrap.sh && pip_install "$$REPO/requirements-dev.txt" && build_assets

assets: ## npm ci && npm run build in each folder whose package.json has a build script
	source scripts/bootstrap.sh && build_assets

run: ## one development process (python app.py, no Redis) on http://127.0.0.1:5000
	$(PY) app.py

stack-up: ## Redis, the app instances and HAProxy, natively (scripts/stack up; STACK_PORT, APP_REPLICAS)
	scripts/stack up

stack-down: ## stop the native stack
	scripts/stack down

stack-status: ## URLs, pids and log folder of the native stack
	scripts/stack status

test: ## every test, installing what is missing first (scripts/test; ARGS="-k cookies" to select)
	scripts/test $(ARGS)

lint: ## ruff check and ruff format --check (settings in pyproject.toml)
	$(RUFF) check .
	$(RUFF) format --check .

format: ## ruff format, then the safe ruff fixes
	$(RUFF) format .
	$(RUFF) check --fix .

bench: ## the benchmark (bench/run; ARGS="--quick")
	bench/run $(ARGS)

screenshot: ## rewrite docs/demo.png (the README's picture) from the demo's two-browser test
	UPDATE_DEMO_SCREENSHOT=1 scripts/test -k two_browsers_on_different_instances
