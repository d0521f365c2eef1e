# One-command setup: `make serve` installs and serves the demo model on :8500,
# `make test` installs the test extras and runs the suite; `make check` runs ruff and mypy;
# `make protos` regenerates protos/ and client/protos/ from the installed TensorFlow Serving
# descriptors.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8500
DEMO_DIR ?= demo_models

.PHONY: serve test check install install-test install-dev bench profile protos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[server]'

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[server,test,text,cloud,tracing]'

install-dev: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[server,test,text,cloud,tracing,dev]'

$(DEMO_DIR)/half_plus_two/1/saved_model.pb: | install
	$(BIN)/python -m pyserving.server.demo $(DEMO_DIR)

serve: install $(DEMO_DIR)/half_plus_two/1/saved_model.pb
	$(BIN)/pyserving --port=$(PORT) --model_name=half_plus_two \
		--model_base_path=$(abspath $(DEMO_DIR))/half_plus_two

test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# mypy's targets and its path to server/ and client/ are in pyproject.toml ([tool.mypy]).
check: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy --python-executable $(BIN)/python

protos: install-test
	$(BIN)/python tools/generate_protos.py

bench: install-test
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/predict_overhead.py
	$(BIN)/python bench/batching_throughput.py
	$(BIN)/python bench/memory_cycles.py
	$(BIN)/python bench/workers_throughput.py
	$(BIN)/python bench/rest_vs_grpc.py
	$(BIN)/python bench/rollout_shadow.py

# py-spy on a loaded server of this tree: flamegraph SVG + top frames (PROFILE=tiny|mlp|...).
PROFILE ?= tiny
profile: install-test
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	cd bench && ../$(BIN)/python compare_ref.py --profile $(PROFILE) --profile-out ../profile-$(PROFILE).svg

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info .mypy_cache .ruff_cache
