# fluidmargin: `make demo` runs the main job, `make test` runs every test. Both set themselves up.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup demo test bench lint typecheck clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/fluidmargin demo --out out/demo --liquidation waterfall

# the browser test drives Debian's Chromium: installed here (apt-get) when /usr/bin/chromium is missing
.PHONY: chromium
chromium:
	@bash scripts/chromium.sh >/dev/null || echo "scripts/chromium.sh failed: the browser test will fail (see above)" >&2

test: $(STAMP) chromium
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src
	FLUIDMARGIN_TEST_PG_URL="$$(bash scripts/postgres.sh)" $(BIN)/python -m pytest -n 2 -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_liquidation.py
	$(BIN)/python benchmarks/bench_portfolio.py
	$(BIN)/python benchmarks/bench_risk_models.py
	$(BIN)/python benchmarks/bench_governance.py
	$(BIN)/python benchmarks/bench_stress.py

.PHONY: bench-service
bench-service: $(STAMP)
	FLUIDMARGIN_BENCH_PG_URL="$$(bash scripts/postgres.sh)" $(BIN)/python benchmarks/bench_service.py
	$(BIN)/python benchmarks/bench_ws.py

# the service on SQLite (out/serve/, a new log each time) with the crash scenario feeding it; Ctrl-C stops it
.PHONY: serve
SERVE_PORT ?= 8000
serve: $(STAMP)
	rm -rf out/serve/events.db out/serve/events.db-* out/serve/events.db.snapshots
	$(BIN)/fluidmargin serve --db out/serve/events.db --admin-key-file out/serve/admin.key --port $(SERVE_PORT) --demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .mypy_cache
