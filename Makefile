# Two commands: `make run` and `make test`. Each sets up what it needs on a machine
# with only Python 3.11 and pip: uv (pinned) in .tools/, the locked environment in
# .venv/ (from uv.lock), and espeak-ng from Debian when missing and we are root.
SHELL := /bin/bash
PYTHON ?= python3
TOOLS := .tools
UV := $(TOOLS)/bin/uv
UV_VERSION := 0.13.8
VENV := .venv
PY := $(VENV)/bin/python
export UV_PROJECT_ENVIRONMENT := $(VENV)

WAV ?= ../shared/audio/jfk_8k.wav
NAME ?= realtime
SERVER ?=
GRAPH ?=

.PHONY: setup run test call bench graph clean espeak-ng test-deps

setup: $(VENV)/.synced espeak-ng

# Debian packages the tests use: PostgreSQL's server binaries (tests/postgres.py),
# redis-server (tests/test_events.py), chromium (tests/test_dashboard_browser.py) and
# nginx (tests/test_workers_e2e.py, offline/proxy.py).
test-deps:
	@for pkg in redis-server:redis-server chromium:chromium nginx:nginx-light; do \
	  command -v $${pkg%%:*} >/dev/null || [ -x /usr/sbin/$${pkg%%:*} ] || { \
	    if [ "$$(id -u)" = 0 ]; then \
	      echo "installing $${pkg#*:} from Debian"; \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $${pkg#*:} >/dev/null; \
	    else \
	      echo "$${pkg#*:} is missing: install it with 'sudo apt-get install $${pkg#*:}'" >&2; exit 1; \
	    fi; }; \
	done
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing postgresql from Debian"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else \
	    echo "PostgreSQL is missing: install it with 'sudo apt-get install postgresql'" >&2; exit 1; \
	  fi; }

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --python "$$($(PYTHON) -c 'import sys; print(sys.executable)')"
	@touch $@

espeak-ng:
	@command -v espeak-ng >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing espeak-ng from Debian"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; \
	  else \
	    echo "espeak-ng is missing: install it with 'sudo apt-get install espeak-ng'" >&2; exit 1; \
	  fi; }

## Start the server (offline agent when no provider key is set).
run: setup
	$(PY) server.py

## Run every test, offline.
test: setup test-deps
	$(PY) -m pytest

## Call a running server like Twilio would: make call WAV=../shared/audio/jfk_8k.wav [SERVER=http://127.0.0.1:8000] [GRAPH=cascade]
call: setup
	$(PY) -m offline.caller --wav $(WAV) $(if $(SERVER),--server $(SERVER),) $(if $(GRAPH),--graph $(GRAPH),)

## Benchmarks over loopback against the real server; prints the figures.
bench: setup
	$(PY) -m bench

## Render a pipeline graph from the code that builds it: make graph [NAME=realtime|cascade]
graph: setup
	$(PY) -m pipelines.render $(NAME) --out docs/graphs/$(NAME).mmd
	@command -v dot >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; \
	  else echo "graphviz is missing: sudo apt-get install graphviz" >&2; exit 1; fi; }
	$(PY) -m pipelines.render $(NAME) --format svg --out docs/graphs/$(NAME).svg

clean:
	rm -rf $(TOOLS) $(VENV) .pytest_cache
