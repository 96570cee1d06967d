# The one entry point people and CI share. `make demo` and `make test` work on a fresh machine:
# they install the wasm32-wasip2 target they need (and wasm32-wasip1, for the core-module guest),
# and `make test` the redis-server its cluster tests start.

CARGO ?= cargo
GUEST_TARGET := wasm32-wasip2
GUESTS := hello long-time-task queue-demo seed-pool seed-queue sieve test-calls test-command test-driver test-hostile test-job test-queue
# Guests also built as WASI preview 1 core modules, as older toolchains emit them.
CORE_TARGET := wasm32-wasip1
CORE_GUESTS := hello test-job
GUEST_DIR := target/$(GUEST_TARGET)/release
POOLHOST := target/debug/poolhost
# Guests are built without line tables: backtraces name functions from the name section, and line
# tables made `sieve.wasm` 2.5 MB (a tenth of it code), which every run reads and hashes to find
# its compiled form in the cache. The host's release build keeps them, for profiling.
GUEST_BUILD := CARGO_PROFILE_RELEASE_DEBUG=false $(CARGO) build --release

.PHONY: all build target guests rust-guests js-guests python-venv python-guests python-test redis celery test demo peers bench fuzz ci clean

all: build guests

build:
	$(CARGO) build

# Installs the guest targets once; a no-op when they are there.
target:
	@rustup target list --installed | grep -qx $(GUEST_TARGET) || rustup target add $(GUEST_TARGET)
	@rustup target list --installed | grep -qx $(CORE_TARGET) || rustup target add $(CORE_TARGET)

guests: rust-guests js-guests python-guests

rust-guests: target
	$(GUEST_BUILD) --target $(GUEST_TARGET) $(addprefix -p ,$(GUESTS))
	$(GUEST_BUILD) --target $(CORE_TARGET) $(addprefix -p ,$(CORE_GUESTS))

# The JavaScript example, built with componentize-qjs (QuickJS; `--sync` for the synchronous
# ABI poolhost runs), installed from npm into target/ when missing. Its WIT folder holds the
# example's world, with WASI's packages and poolhost's beside it under deps/.
JS_OUT := target/javascript
COMPONENTIZE_QJS := $(JS_OUT)/node_modules/.bin/componentize-qjs
JS_EXAMPLE := guest/examples/javascript

$(COMPONENTIZE_QJS):
	npm install --prefix $(JS_OUT) --no-save --no-audit --no-fund componentize-qjs@0.4.5

JS_SOURCES := $(JS_EXAMPLE)/seed.js $(JS_EXAMPLE)/seed.wit wit/pool.wit $(wildcard wit/deps/*.wit)

js-guests: $(JS_OUT)/seed.wasm $(JS_OUT)/seed-async.wasm

$(JS_OUT)/wit/seed.wit: $(JS_SOURCES)
	@mkdir -p $(JS_OUT)/wit/deps/poolhost
	@cp wit/deps/*.wit $(JS_OUT)/wit/deps/
	@cp wit/pool.wit $(JS_OUT)/wit/deps/poolhost/
	@cp $(JS_EXAMPLE)/seed.wit $(JS_OUT)/wit/

$(JS_OUT)/seed.wasm: $(JS_OUT)/wit/seed.wit | $(COMPONENTIZE_QJS)
	$(COMPONENTIZE_QJS) --wit $(JS_OUT)/wit --world seed --js $(JS_EXAMPLE)/seed.js --sync \
	    -o $@ > /dev/null

# The toolchain's default, for the async ABI, which poolhost refuses (tested).
$(JS_OUT)/seed-async.wasm: $(JS_OUT)/wit/seed.wit | $(COMPONENTIZE_QJS)
	$(COMPONENTIZE_QJS) --wit $(JS_OUT)/wit --world seed --js $(JS_EXAMPLE)/seed.js -o $@ > /dev/null

# The Python examples, built by guest/python's build command with componentize-py (pinned), which
# is installed with pip into a virtual environment of its own when missing (with Debian's
# python3-venv, when `python3 -m venv` lacks it). A component is rebuilt when its module, the
# guest package or the WIT changes.
PYTHON_OUT := target/python
PYTHON_VENV := $(PYTHON_OUT)/venv
PYTHON_GUESTS := tasks seed_pool seed_queue test_pool
COMPONENTIZE_PY_VERSION := 0.25.1
PYTHON_GUEST_SOURCES := $(wildcard guest/python/poolhost/*.py guest/python/poolhost_build/*.py) \
    wit/pool.wit $(wildcard wit/deps/*.wit)

python-venv:
	@test -x $(PYTHON_VENV)/bin/pip || python3 -m venv --clear $(PYTHON_VENV) 2>/dev/null || { \
	    apt-get install -y -q python3-venv || (apt-get update -q && apt-get install -y -q python3-venv); \
	    python3 -m venv --clear $(PYTHON_VENV); }
	@$(PYTHON_VENV)/bin/python -m pip show componentize-py 2>/dev/null | \
	    grep -qx 'Version: $(COMPONENTIZE_PY_VERSION)' || \
	    $(PYTHON_VENV)/bin/python -m pip install -q componentize-py==$(COMPONENTIZE_PY_VERSION)

python-guests: $(PYTHON_GUESTS:%=$(PYTHON_OUT)/%.wasm)

$(PYTHON_OUT)/%.wasm: guest/examples/python/%.py $(PYTHON_GUEST_SOURCES) | python-venv
	PYTHONPATH=guest/python $(PYTHON_VENV)/bin/python -m poolhost_build $< -o $@

# The unit tests of the Python package and its build command, on the machine's python3.
python-test:
	PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -s guest/python/tests

# The cluster's tests start their own Redis servers: Debian's redis-server, installed when missing
# (CI runs as root). Only the binary is used; the package's own service is not needed.
redis:
	@command -v redis-server >/dev/null || apt-get install -y -q redis-server || \
	    (apt-get update -q && apt-get install -y -q redis-server)

test: guests redis python-test
	$(CARGO) test -p poolhost -p poolhost-guest

demo: build guests
	@echo '== the seed: a pool of 4, five long_time_task(i) calls; task 4 waits for a free worker'
	$(POOLHOST) run $(GUEST_DIR)/long_time_task.wasm -n 4 --invoke \
	    'long-time-task(0)' 'long-time-task(1)' 'long-time-task(2)' 'long-time-task(3)' 'long-time-task(4)'
	@echo
	@echo '== the seed: writer and reader on two workers share queue q; the reader gets i, t, c, a, s, t'
	$(POOLHOST) run $(GUEST_DIR)/queue_demo.wasm -n 2 --invoke 'writer()' 'reader(6)'
	@echo
	@echo '== jobs: a command once per input line, each in its own sandbox (GNU parallel, sandboxed)'
	printf '%s\n' world '"dear reader"' 'and you' | $(POOLHOST) run $(GUEST_DIR)/hello.wasm -n 2 --each - --tag
	@echo
	@echo '== driver mode: the seed'"'"'s first program, parent and children, as one component'
	$(POOLHOST) run $(GUEST_DIR)/seed-pool.wasm -n 4
	@echo
	@echo '== driver mode: the seed'"'"'s second program as one component'
	$(POOLHOST) run $(GUEST_DIR)/seed-queue.wasm
	@echo
	@echo '== the seed'"'"'s second program in Python, as the seed wrote it but for its imports'
	$(POOLHOST) run $(PYTHON_OUT)/seed_queue.wasm

# The benchmark's peers, installed when missing: GNU parallel from Debian's packages, and the
# wasmtime CLI of the same major version as our wasmtime dependency (a long build, once).
PEERS := target/bench/peers
peers:
	@command -v parallel >/dev/null || apt-get install -y -q parallel || \
	    (apt-get update -q && apt-get install -y -q parallel)
	@test -x $(PEERS)/bin/wasmtime || \
	    $(CARGO) install --locked wasmtime-cli --version '^48.0.8' --root $(PEERS)

# Celery, the cluster rows' peer, in a virtual environment of the bench's own (kombu's Redis
# transport also needs `packaging`).
CELERY_VENV := target/bench/celery-venv
celery:
	@test -x $(CELERY_VENV)/bin/python || python3 -m venv $(CELERY_VENV)
	@$(CELERY_VENV)/bin/python -c 'import celery, redis, packaging' 2>/dev/null || \
	    $(CELERY_VENV)/bin/pip install -q celery redis packaging

bench: target peers redis celery python-guests
	$(GUEST_BUILD) --target $(GUEST_TARGET) -p test-calls -p test-queue -p hello -p sieve
	$(CARGO) bench -p poolhost --bench pool

# Coverage-guided fuzzing of the wire decoder and WAVE call parsing with cargo-fuzz (libFuzzer),
# FUZZ_SECONDS a target. cargo-fuzz wants a nightly compiler for its flags; RUSTC_BOOTSTRAP lets
# this machine's stable one take them. `-s none`: the code under test is safe Rust, so a crash is
# a panic, which libFuzzer catches without a sanitizer's cost.
FUZZ_SECONDS ?= 60
fuzz: guests
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none ipc_frame -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none wave_call -- -max_total_time=$(FUZZ_SECONDS)

ci: test

clean:
	$(CARGO) clean
