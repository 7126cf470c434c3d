# dicom_or: two commands on a fresh Debian 12 machine.
#   make demo [DURATION=30]   install, build, run the OR demo (Ctrl-C or DURATION seconds)
#   make test                 install, build, run every test (colcon test + test/ + lint)
# Everything else is a step of those two.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
ENV := tools/with_env
STAMP := $(VENV)/.dicom_or-installed
DURATION ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=
PYNETDICOM_APPS := echoscp echoscu findscu getscu movescu qrscp storescp storescu

.PHONY: all venv system-deps build test test-packages test-system lint demo bench clean

all: build

# Debian packages the tests and demo use as real DICOM peers (dcmtk, dicom3tools, Orthanc)
# and ffmpeg for the reference encoder in bench/. Installed only when missing.
system-deps:
	@tools/install_system_deps

# The venv: pinned ROS 2 Kilted wheels + Python dependencies, then the CMake export fix.
# Re-runs only when requirements.txt changes.
venv: $(STAMP)
$(STAMP): requirements.txt tools/fix_wheel_cmake_exports.py
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/python tools/fix_wheel_cmake_exports.py $(VENV)
	@# pynetdicom installs console scripts named like dcmtk's tools (findscu, storescp, ...)
	@# that would shadow the real dcmtk peers on PATH; `python -m pynetdicom <app>` remains.
	cd $(VENV)/bin && rm -f $(PYNETDICOM_APPS)
	@touch $@

# colcon build is incremental; flock serialises concurrent builds of one workspace.
build: venv
	@flock .build.lock $(ENV) colcon build --symlink-install \
	    --event-handlers console_cohesion- summary+ status- 2>&1 \
	    | grep -v "doesn't contain any 'local_setup" || exit $${PIPESTATUS[0]}

test: system-deps build
	$(MAKE) --no-print-directory -k test-packages test-system

# Unit and node tests of every package, through colcon (fails when any test fails).
test-packages:
	$(ENV) colcon test --return-code-on-test-failure \
	    --event-handlers console_direct+ status- \
	    --pytest-args -p no:cacheprovider $(PYTEST_ARGS)

# System tests of the whole workspace (graph end to end, real dcmtk / Orthanc / dciodvfy)
# and the linter.
test-system:
	$(ENV) python -m pytest -p no:cacheprovider test/ $(PYTEST_ARGS)

lint:
	$(ENV) ruff check .

demo: system-deps build
	$(ENV) dicom_or_demo $(if $(DURATION),--duration $(DURATION))

bench: system-deps build
	$(ENV) python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf build install log
