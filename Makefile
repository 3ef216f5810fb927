# The project's vocabulary. Every target sets up what it needs (a .venv) first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 7878
HTTP_PORT ?= 7879

.PHONY: run serve client screenshot gui-speed web web-check web-screenshots web-speed test test-postgres lint typecheck pytest bench bench-search bench-smoke soak ngircd clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "beseda needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
		echo "python3 -m venv failed; installing python3-venv with apt-get"; \
		apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && \
		$(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@# atheris fuzzes the codec where a wheel exists for this platform; elsewhere its test skips.
	@$(BIN)/python -m pip install -q --only-binary=:all: 'atheris>=2.3' 2>/dev/null || \
		echo "atheris has no wheel here; its fuzz test will be skipped"
	@touch $(STAMP)

## run: start the server on the embedded SQLite default (web app on http://HOST:HTTP_PORT/)
run: $(STAMP)
	$(BIN)/beseda serve --host $(HOST) --port $(PORT) --http-port $(HTTP_PORT)

serve: run

## client: open the desktop client
client: $(STAMP)
	$(BIN)/beseda client

## screenshot: docs/screenshot.png from the real client under Xvfb
screenshot: $(STAMP)
	$(BIN)/python scripts/screenshot.py

## gui-speed: how fast the desktop client opens, scrolls 10,000 messages, filters 1,000 users
gui-speed: $(STAMP)
	$(BIN)/python scripts/gui_speed.py

## web: rebuild the web app into src/beseda/web/static/ (needs Node.js; commit the result)
web: web/node_modules/.package-lock.json
	cd web && npm run build

web/node_modules/.package-lock.json: web/package-lock.json
	cd web && npm ci --no-audit --no-fund

## web-check: type-check, lint, format-check and unit-test the web app's sources
web-check: web/node_modules/.package-lock.json
	cd web && npm run check

## web-screenshots: docs/web-*.png from the web app in Chromium against a real server
web-screenshots: $(STAMP)
	$(BIN)/python scripts/web_screenshots.py

## web-speed: the web app's first-load size, time to interactive, 10,000-message scroll
web-speed: $(STAMP)
	$(BIN)/python scripts/web_speed.py

## test: lint, type-check, the whole suite, then its storage tests again on PostgreSQL
test: lint typecheck pytest test-postgres

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

## test-postgres: integration tests with every test server on a throwaway PostgreSQL
## (PG_TESTS=tests/integration for the whole suite; BESEDA_TEST_POSTGRES_URL to use a server)
PG_TESTS ?= tests/integration/test_conversations.py tests/integration/test_history.py \
	tests/integration/test_direct_messages.py tests/integration/test_client_library.py \
	tests/integration/test_two_users.py tests/integration/test_protocol_doc.py \
	tests/integration/test_messages.py \
	tests/integration/test_bounded_reads.py tests/reliability/test_crash.py \
	tests/reliability/test_authorisation.py
test-postgres: $(STAMP)
	BESEDA_TEST_DB=postgresql $(BIN)/pytest -q $(PG_TESTS)

## bench: the full benchmark (search included); writes bench/results/latest.json and docs/performance.md
bench: $(STAMP) ngircd
	$(BIN)/python -m bench

## bench-search: the search scenario alone (1,000,000 messages: indexing on upgrade, p50/p99 per query kind)
bench-search: $(STAMP)
	$(BIN)/python -m bench.search --messages 1000000 --rounds 10 --out bench/results/search.json

## bench-smoke: every scenario at a tiny size (also run by make test, via tests/bench)
bench-smoke: $(STAMP)
	$(BIN)/python -m bench --smoke

## soak: the long versions of the reliability proofs (docs/reliability.md)
soak: $(STAMP)
	BESEDA_SOAK=1 $(BIN)/pytest -q -s -m soak tests/reliability

# ngIRCd, the C reference of the benchmark, from Debian's packages when apt is there.
ngircd:
	@[ -x /usr/sbin/ngircd ] || command -v ngircd >/dev/null 2>&1 || \
		{ command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ngircd >/dev/null; } || \
		echo "ngIRCd is not installed; the benchmark will skip that reference"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
