# mpm-events: the two set-up commands are `make demo` and `make test`.
# Everything is installed into .venv from the project's own files.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VENV_ENV := VIRTUAL_ENV=$(abspath $(VENV)) PATH="$(abspath $(VENV))/bin:$$PATH"

.PHONY: all venv build test test-rust test-python test-wheel demo lint bench fuzz clean chromium

all: build

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "maturin>=1.7,<2" "pytest>=8" "pytest-asyncio>=0.24" pytest-timeout \
		"python-socketio[asyncio_client]>=5.11" aiohttp ruff mypy matplotlib abi3audit \
		watchdog pyyaml packaging psutil pyee websocket-client trustme hypothesis "rich>=13" playwright "pydantic>=2"
# NOTE: claude-mpm without its dependency tree; the line above adds what its dashboard
# server (tests/test_dashboard_real.py) needs beyond python-socketio and aiohttp.
	$(PY) -m pip install -q --no-deps claude-mpm==5.9.10
	touch $@

venv: $(VENV)/.installed

build: venv ## Build the extension in release mode into .venv
	$(VENV_ENV) maturin develop --release -q

test-rust: venv ## Engine tests (no Python linked), sinks tested against a real server
	MPM_TEST_PYTHON=$(abspath $(PY)) cargo test --no-default-features -q

# NOTE: the monitor's browser tests drive Debian's Chromium through playwright
# (playwright's own browser builds cannot be downloaded here).
chromium:
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

test-python: build chromium
	$(PY) -m pytest -q

test-wheel: venv ## The release wheel is abi3-clean, installs and works in a clean virtualenv
	rm -rf target/wheels target/wheel-venv
	$(VENV_ENV) maturin build --release -q -o target/wheels
# NOTE: only CPython 3.11 exists here; abi3audit fails if the extension uses anything
# outside 3.11's stable ABI, which later CPythons (3.12-3.14) keep.
	$(VENV)/bin/abi3audit --strict --summary target/wheels/*.whl
	$(PYTHON) -m venv target/wheel-venv
	target/wheel-venv/bin/python -m pip install -q --no-index target/wheels/*.whl
	cd /tmp && $(abspath target/wheel-venv)/bin/python $(abspath tests/helpers/wheel_smoke.py)

test: test-rust test-wheel test-python ## Every test (pytest last, so its summary closes the run)

demo: build ## The main job: a simulated Claude session's hook stream through the bus
	$(PY) -m mpm_events demo

lint: venv
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --no-default-features -- -D warnings
	$(VENV)/bin/ruff check python tests benches examples tools
	$(VENV)/bin/ruff format --check python tests benches examples tools
	$(VENV)/bin/mypy python/mpm_events
	$(PY) -m mypy.stubtest mpm_events  # the stub matches the built extension (needs a build)
	$(PY) tools/stub_docs.py --check
	$(PY) tools/check_layers.py  # the engine imports no pyo3; binding rooms import only downward

bench: build ## Rust routing/dispatch/anchors, then benchmarks against claude-mpm 5.9.10 and peers (writes docs/benchmarks.md)
# NOTE: bubus is a peer measured by the suite only (issue 16), not a dependency.
	$(PY) -m pip install -q bubus
# NOTE: criterion first: benches/run.py reads its estimates (the engine's bounds, issue 16).
	cargo bench --no-default-features --bench engine -- --warm-up-time 0.5 --measurement-time 2
	$(PY) benches/run.py $(BENCH_ARGS)

FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= topic rules socketio payload record
fuzz: ## Each fuzz target for FUZZ_SECONDS (cargo-fuzz, libFuzzer, nightly toolchain)
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# NOTE: new inputs go to target/fuzz-corpus (the first corpus dir); fuzz/corpus holds
# the committed seeds and is only read.
	for t in $(FUZZ_TARGETS); do \
		mkdir -p target/fuzz-corpus/$$t && \
		cargo +nightly fuzz run $$t target/fuzz-corpus/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -malloc_limit_mb=512 || exit 1; \
	done

clean:
	rm -rf target $(VENV) dist
