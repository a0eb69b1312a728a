# Two commands a newcomer needs: `make serve` and `make test`. Each creates or reuses .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --constraint constraints.txt
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint fit accuracy bench-serving clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Stamps record what was installed; they are rebuilt when the dependency list changes.
# The api and, for the embedded retrain worker, the training package (CPU torch). The api
# process itself never imports torch.
$(VENV)/.serve-installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) --editable '.[serve,train]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) --editable '.[dev]'
	touch $@

# Migrations run as their own step first (embedded default: SQLite under var/). The api starts
# one retrain worker as a child process (FORECAST_EMBEDDED_WORKER).
serve: $(VENV)/.serve-installed
	$(PY) -m service migrate
	$(PY) -m service serve --host $(HOST) --port $(PORT)

# Two tools from Debian's packages: the deployment tests validate docker-compose.yml with
# docker-compose (it needs no Docker engine for that), and the serving benchmark's smoke test
# drives the servers with wrk. As root, make installs them when missing.
DEBIAN_TOOLS := docker-compose wrk

test: $(VENV)/.dev-installed
	@missing=""; for tool in $(DEBIAN_TOOLS); do \
		command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && apt-get install -y -qq $$missing >/dev/null 2>&1; \
		else \
			echo "make test needs:$$missing (sudo apt-get install$$missing)" >&2; exit 1; \
		fi; \
	fi
	$(PY) -m pytest

lint: $(VENV)/.dev-installed
	$(PY) -m ruff check service training tests bench
	$(PY) -m ruff format --check service training tests bench
	$(PY) -m mypy

# Retrain the bundled AirPassengers model (README: "Retrain the bundle").
fit: $(VENV)/.dev-installed
	$(PY) -m training fit --data data/air_passengers.csv --horizon 12 --freq MS \
		--transform log --season-length 12 --season-gate --calendar \
		--name air_passengers --out models/air_passengers

# The M3 accuracy tables and bundles (README: "Forecast accuracy on M3"); about 40 minutes.
$(VENV)/.bench-installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) --editable '.[bench]'
	touch $@

accuracy: $(VENV)/.bench-installed
	$(PY) -m bench.accuracy --dataset m3-monthly --bundle-out models/m3_monthly \
		--out bench/results/accuracy-m3-monthly-$$(date +%F).md
	$(PY) -m bench.accuracy --dataset m3-quarterly --bundle-out models/m3_quarterly \
		--out bench/results/accuracy-m3-quarterly-$$(date +%F).md

# The serving table (README: "Serving speed"): the api against the HTTP floor and MLflow
# serving, 10 s per run; needs wrk (apt-get install wrk) and PostgreSQL.
bench-serving: $(VENV)/.dev-installed
	$(PY) bench/serving.py --out bench/results/serving-$$(date +%F).md

clean:
	rm -rf $(VENV) var .pytest_cache
