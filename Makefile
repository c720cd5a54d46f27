# LLMux: one entry point for a fresh machine.
#   make demo   build the engine (release) and run the scripted demo against the fake upstream
#   make test   lint + Rust tests + build + stub check + pytest (what CI runs)
#   make bench  side-by-side SDK benchmark (llmux, LiteLLM, openai, aiohttp) in .bench-venv
#   make bench-gateway  llmux serve vs the fake upstream vs the LiteLLM proxy, with wrk

PYTHON ?= python3
VENV ?= .venv
BENCH_VENV ?= .bench-venv
VPY := $(abspath $(VENV))/bin/python
BPY := $(abspath $(BENCH_VENV))/bin/python
DEV_DEPS := "maturin>=1.8,<2" "pytest>=8" "pytest-asyncio>=0.24" pytest-timeout ruff mypy typing_extensions openai "litellm==1.110.2" anthropic google-genai boto3

.PHONY: demo test lint rust-test stubs pytest build build-release bench bench-gateway clean

$(VENV)/.deps: Makefile
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(DEV_DEPS)
	touch $@

build: $(VENV)/.deps
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop -q

build-release: $(VENV)/.deps
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop -q --release

demo: build-release
	$(VPY) examples/demo.py

lint: $(VENV)/.deps
	cargo fmt --check
	cargo clippy --all-targets --all-features -- -D warnings
	$(VENV)/bin/ruff check python tests benches examples
	$(VENV)/bin/ruff format --check python tests benches examples

rust-test:
	cargo test --no-default-features
	cargo test --features server

stubs: build
	$(VPY) -m mypy.stubtest llmux._llmux

pytest: build
	LITELLM_LOCAL_MODEL_COST_MAP=True $(VPY) -m pytest -q tests

test: lint rust-test stubs pytest

$(BENCH_VENV)/.deps: benches/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BPY) -m pip install -q --upgrade pip
	$(BPY) -m pip install -q "maturin>=1.8,<2" -r benches/requirements.txt
	touch $@

bench: $(BENCH_VENV)/.deps
	rm -rf target/wheels
	$(BENCH_VENV)/bin/maturin build -q --release -o target/wheels
	$(BPY) -m pip install -q --force-reinstall --no-deps target/wheels/*.whl
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BPY) benches/sdk_throughput.py

PROXY_VENV ?= .bench-proxy-venv

$(PROXY_VENV)/.deps: benches/requirements-proxy.txt
	$(PYTHON) -m venv $(PROXY_VENV)
	$(PROXY_VENV)/bin/python -m pip install -q --upgrade pip
	$(PROXY_VENV)/bin/python -m pip install -q -r benches/requirements-proxy.txt
	touch $@

bench-gateway: $(PROXY_VENV)/.deps
	@command -v wrk >/dev/null || { echo "wrk not found: install it (Debian/Ubuntu: apt-get install wrk)"; exit 1; }
	cargo build --release --features server --bin llmux --bin llmux-fake-upstream
	$(PYTHON) benches/gateway_throughput.py --proxy-venv $(PROXY_VENV)

clean:
	rm -rf target $(VENV) $(BENCH_VENV) $(PROXY_VENV) python/llmux/*.so
