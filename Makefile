# The two commands: `make demo` (main job on an embedded default) and `make test`.
# Both create .venv on first use and are no-ops for the install afterwards.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Tests never leave the machine (overridable, e.g. by CI).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= 77

.PHONY: demo test venv bench clean
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

bench: $(STAMP)
	$(PY) bench/run_all.py --quick

clean:
	rm -rf $(VENV) build *.egg-info
