# diffusion_policy_ros: `make demo` runs the main job, `make test` the tests. Both set up .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.setup-done
# env.sh: the venv (ROS wheels: ament-index lookups need it on AMENT_PREFIX_PATH), DDS on loopback so
# tests and the demo never talk to other machines, and, once built, install/setup.bash + executables.
ENV := . ./env.sh
EPISODES ?= 5

.PHONY: setup build test demo clean

setup: $(STAMP)

# Idempotent: re-runs only when requirements.txt changes (a second `make setup` takes well under a second).
$(STAMP): requirements.txt
	@echo "[setup] creating $(VENV) and installing requirements.txt (first run: a few minutes)"
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check "setuptools==79.0.1" "torch==2.13.0"
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 \
		| grep -v "^WARNING: Location" || true
	$(VENV)/bin/python -c "import torch, rclpy, rosbags, mujoco, pinocchio, ompl, diffusers; \
		assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

build: setup
	@# --symlink-install links build/ to the sources; a file renamed or deleted since leaves a dangling
	@# link there that fails the next build ("can't copy ... not a regular file"): drop those first.
	@find build install -xtype l -delete 2>/dev/null || true
	$(ENV) && colcon build --symlink-install --event-handlers console_cohesion-

test: build
	$(ENV) && rc=0 && \
		{ colcon test --return-code-on-test-failure --event-handlers console_direct+ \
		              --pytest-args -p no:cacheprovider || rc=$$?; } && \
		{ colcon test-result --verbose || rc=$${rc/#0/1}; } && exit $$rc

demo: build
	$(ENV) && dp-ros demo --episodes $(EPISODES)

clean:
	rm -rf build install log
