# Two commands do everything on a fresh machine:  make demo   and   make test
SHELL := /bin/bash
VENV := .venv
ACT := source $(VENV)/bin/activate &&
# DDS stays on this machine, in a domain of the targets' own (GROMA_ROS_DOMAIN_ID=NN make demo), whatever the
# shell's ROS_DOMAIN_ID: the demo's camera must never reach a robot. Each test run claims its own domain.
GROMA_ROS_DOMAIN_ID ?= 42
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID := $(GROMA_ROS_DOMAIN_ID)
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
