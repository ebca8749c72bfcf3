# textgen — the two commands on a fresh machine are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TEXTGEN := $(BIN)/textgen
SHAKESPEARE ?= ../shared/data/tinyshakespeare/input.txt

.PHONY: install demo test test-slow lint fmt toy-sentences shakespeare ptb-small ptb-best soak soak-kill soak-fuzz bench-generate bench-train bench-ko bench-prepare bench-reg bench-export bench-serve bench-finetune bench-step bench-end-to-end clean

$(BIN)/textgen: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# the compiled LSTM cell of the bf16 step, built once here (not fatal: it falls back)
	-$(BIN)/python -m textgen.model.cell_op
	@touch $@

install: $(BIN)/textgen  ## a .venv with textgen installed in editable mode

demo: install  ## train the Korean toy model and generate its three sentences
	$(TEXTGEN) train --config configs/ko-toy.toml --out runs/ko-toy --overwrite
	@for seed in 경마장에 그의 가는; do $(TEXTGEN) generate --model runs/ko-toy --seed "$$seed"; done

test: install  ## the test suite (1023 tests, about 10 minutes on 2 cores); `make test-slow` the long ones, `make soak` the kill trials and the long fuzz
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: install  ## the multi-process and long tests (two-worker training, readers during saves, the house fixtures; about 5 minutes); CI runs them after make test
	$(BIN)/python -m pytest -q -m slow --ignore=tests/test_soak.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# A pipeline: train if needed, generate from every first word of the corpus, count them.
toy-sentences: install
	@test -f runs/ko-toy/weights.npz || $(TEXTGEN) train --config configs/ko-toy.toml --out runs/ko-toy --quiet
	@cut -d' ' -f1 data/ko-toy.txt | $(TEXTGEN) generate --model runs/ko-toy - | sort | uniq -c | sort -rn

shakespeare: install  ## one epoch of the char model on tiny Shakespeare
	$(TEXTGEN) train --config configs/shakespeare-char.toml --corpus $(SHAKESPEARE) --overwrite
	$(TEXTGEN) generate --model runs/shakespeare-char --seed "ROMEO:" --length 200

ptb-small: install  ## Zaremba et al.'s small PTB LSTM (about 50 min on 2 cores), then test perplexity
	$(TEXTGEN) train --config configs/ptb-small.toml --out runs/ptb-small --overwrite
	$(TEXTGEN) eval --model runs/ptb-small ../shared/data/ptb/ptb.test.txt

ptb-best: install  ## the best PTB model for one hour of training on 2 cores, then test perplexity
	$(TEXTGEN) train --config configs/ptb-best-cpu.toml --out runs/ptb-best-cpu --overwrite
	$(TEXTGEN) eval --model runs/ptb-best-cpu ../shared/data/ptb/ptb.test.txt

clean:
	rm -rf runs .pytest_cache .ruff_cache

soak: soak-kill soak-fuzz  ## the kill trials, then the fuzz test's long profile (about 40 min)

soak-kill: install  ## kill training at random moments (SOAK_TRIALS, default 20) and resume
	$(BIN)/python -m pytest -q -s tests/test_soak.py

soak-fuzz: install  ## the fuzz test's long profile: 13,000 hostile CLI cases (about 30 min on 2 cores), each failure kind counted
	TEXTGEN_FUZZ=long $(BIN)/python -m pytest -q -s tests/test_fuzz.py

bench-generate: install  ## decoding step vs LiteRT's (ai-edge-litert, in .[dev]), the tutorial's re-feed and PyTorch (.[bench])
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/generate.py

bench-train: install  ## training tokens/s vs PyTorch nn.LSTM on the same CPU (needs .[bench])
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/train_throughput.py

bench-ko: install  ## Korean levels (word, char, jamo, subword, morpheme), 3 min of training each
	$(BIN)/python bench/ko_levels.py

bench-prepare: install  ## textgen prepare on a 200 MB corpus: MB/s, peak RSS, training RSS
	$(BIN)/python bench/prepare.py

bench-reg: install  ## each regularization / schedule key and each AWD-LSTM regularizer against the ptb-small base (~50 min)
	$(BIN)/python bench/regularization.py

bench-export: install  ## SavedModel and LiteRT exports: sizes, times, greedy equality, LiteRT step vs numpy (~2 min)
	$(BIN)/python bench/export.py

bench-step: install  ## the numpy decoding step against LiteRT's on 1 and 2 threads, batch 1/16/32 (~4 min)
	$(BIN)/python bench/step.py --litert-one-thread --repeats 6

bench-end-to-end: install  ## textgen train's tokens/s against its own step, where an epoch's time goes, command to first step vs PyTorch (~10 min)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/end_to_end.py --epochs 2 --profile

bench-serve: install  ## textgen serve with 1, 8, 32, 64 streaming clients: tokens/s, TTFT, TBT, roofline (~1 min)
	$(BIN)/python bench/serve.py

bench-finetune: install  ## the Constitution model fine-tuned on movie reviews vs trained from scratch: fixed steps, then 30 s / 1 / 2 min (~25 min)
	$(BIN)/python bench/finetune.py --budgets --epochs 1 2 3
	$(BIN)/python bench/finetune.py --budgets 0.5 1 2
