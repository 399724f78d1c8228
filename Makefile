# Two-command quick start: `make demo` and `make test` each create .venv when missing, install lbtf
# (editable, with test extras) and then run their job. Tests run on every core (pytest-xdist):
# most of them wait on subprocesses importing TensorFlow.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lbtf-installed
# Quiet TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) so progress lines stay readable.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo results test bench lint install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) run_experiments.py

# The generated blocks (README Results, docs/results.md, docs/study.md) from a finished run
# (default: the newest table2 run folder).
RUN ?= $(shell ls -dt outputs/table2_*/ 2>/dev/null | head -n 1)
results: $(STAMP)
	$(PY) tools/readme.py $(RUN)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n auto tests

bench: $(STAMP)
	$(PY) bench/bench_train.py
	$(PY) bench/bench_sharpness.py
	$(PY) bench/bench_landscape.py
	$(PY) bench/bench_remedies.py
	$(PY) bench/bench_epoch.py
	$(PY) bench/bench_hessian.py
	$(PY) bench/bench_scaling.py
	$(PY) bench/bench_profile.py
	$(PY) bench/bench_replicas.py
	$(PY) bench/bench_measures.py

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
