# FaST: two commands on a fresh clone.
#   make demo   create .venv, install, run the whole pipeline on the toy world
#   make demo-seeds  the demo on seeds 0,1,2 and one table of their acceptance numbers
#   make test   create .venv, install, run every test (installs Debian's Chromium first if missing, as root)
#   make web    the agent in a browser page on 127.0.0.1 (the demo's checkpoints)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo demo-seeds test test-real lint bench-eval bench-real gpu-check clean-demo venv web browser

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m playground.demo

# The demo on several seeds (each under playground/demo-seedN/, seed 0 in playground/demo/) and one table of
# their acceptance numbers with mean and min (playground/demo-seeds/table.md): make demo-seeds SEEDS=0,1,2,3
SEEDS ?= 0,1,2
demo-seeds: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m playground.demo_seeds --seeds $(SEEDS)

test: $(STAMP) browser
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -m "not real"

# `python -m fast.web`: upload an image, ask, see the decision, ROI, masks, evidence and answer.
# Extra options (any of `python -m fast`'s): make web ARGS="--port 8000 --mode system2-always"
web: $(STAMP)
	$(PY) -m fast.web $(ARGS)

# The page test drives Debian's Chromium headless through its chromedriver (nothing downloads a browser).
browser:
	@if command -v chromedriver >/dev/null && \
		{ command -v chromium || command -v chromium-browser || command -v google-chrome; } >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "The page test needs Chromium and chromedriver: sudo apt-get update && sudo apt-get install -y chromium chromium-driver" >&2; \
		exit 1; \
	fi

# Every entry point at the real LLaVA-1.5-7B / CLIP-336 / SAM-H widths (shallow, random-init models).
test-real: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -m real

# Single vs batched (8) throughput of the System-1 runner on the tiny model (eval/bench_answerer.py).
bench-eval: $(STAMP)
	$(PY) -m eval.bench_answerer

# Every training entry point at the real widths (2 LM layers, 2 steps): s/step, peak RSS, checkpoint size;
# and the agent's resident parameters at the true 7B + SAM-H sizes (playground/bench_real.py).
bench-real: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH flock /tmp/fast-heavy.lock $(PY) -m playground.bench_real

# One H100: LoRA r128 under ZeRO-3 at LLaMA-7B width, a 4-bit LoRA step, the agent on one image (scripts/gpu_check.py).
gpu-check: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) scripts/gpu_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-demo:
	rm -rf playground/demo playground/demo-seed* playground/data dataset/ade20k dataset/reason_seg
