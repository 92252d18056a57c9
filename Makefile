# The two commands: `make demo` (main job on an embedded default) and `make test`.
# Both create .venv on first use and are no-ops for the install afterwards.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Tests never leave the machine (overridable, e.g. by CI).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= 77

.PHONY: demo test venv bench bench-anchors clean
demo: $(STAMP)
	$(VENV)/bin/mbrl-ros demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

venv: $(STAMP)

$(STAMP): requirements.txt setup.py setup.cfg package.xml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	# torch first, pinned: the CPU wheel on local disk (never a CUDA build).
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Benchmarks: one command each (see BENCHMARKS.md); --quick versions here.
bench: $(STAMP)
	$(PY) bench/sim.py --quick
	$(PY) bench/logger.py --quick
	$(PY) bench/models.py --quick
	$(PY) bench/controllers.py --quick
	$(PY) bench/sampling_rate.py --quick
	$(PY) bench/slow_replans.py --quick
	$(PY) bench/jitter.py --quick
	$(PY) bench/demo.py --quick
	$(PY) bench/soak.py --quick

# Peers (Crocoddyl, pytorch_mppi, mbrl-lib, GPyTorch) need their own environment.
.venv-anchors/.installed: ../shared/anchors/requirements.txt requirements.txt
	test -x .venv-anchors/bin/python || $(PYTHON) -m venv .venv-anchors
	.venv-anchors/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	.venv-anchors/bin/pip install --quiet --disable-pip-version-check --no-deps \
		-r ../shared/anchors/requirements.txt
	# our compiled iLQR kernels (bench/anchors.py imports mbrl_ros): same pins as requirements.txt
	.venv-anchors/bin/pip install --quiet --disable-pip-version-check --no-deps \
		$$(grep -E '^(numba|llvmlite)==' requirements.txt)
	touch $@

bench-anchors: .venv-anchors/.installed
	.venv-anchors/bin/python bench/anchors.py --quick

clean:
	rm -rf $(VENV) build *.egg-info
