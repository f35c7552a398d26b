# Two commands do everything on a fresh machine:  make demo   and   make test
SHELL := /bin/bash
VENV := .venv
ACT := source $(VENV)/bin/activate &&
# DDS stays on this machine; each run may pick its own domain (ROS_DOMAIN_ID=NN make ...).
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= 42
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench clean

setup:
	bash scripts/setup.sh

demo: setup
	$(ACT) python scripts/demo.py

test: setup
	$(ACT) ruff check groma_ros tests benchmarks scripts launch
	$(ACT) python -m pytest $(PYTEST_ARGS)

lint: setup
	$(ACT) ruff check groma_ros tests benchmarks scripts launch

bench: setup
	$(ACT) python benchmarks/engine_latency.py

clean:
	rm -rf build install log $(VENV)
