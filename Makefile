# FaST: two commands on a fresh clone.
#   make demo   create .venv, install, run the whole pipeline on the toy world
#   make test   create .venv, install, run every test
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-real lint bench-eval clean-demo venv

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m playground.demo

test: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -m "not real"

# Every entry point at the real LLaVA-1.5-7B / CLIP-336 / SAM-H widths (shallow, random-init models).
test-real: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -m real

# Single vs batched (8) throughput of the System-1 runner on the tiny model (eval/bench_answerer.py).
bench-eval: $(STAMP)
	$(PY) -m eval.bench_answerer

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-demo:
	rm -rf playground/demo playground/data dataset/ade20k dataset/reason_seg
