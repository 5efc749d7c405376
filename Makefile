# Set-up is part of every target: a fresh clone needs nothing but Python 3.10 (pyenv reads
# .python-version) and access to PyPI.
PYTHON ?= python3.10
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
INSTALLED := $(VENV)/.installed

.PHONY: install run serve demo test test-fast lint format lock param-count clean redis-server

install: $(INSTALLED)

# Re-installs whenever the lock file or the package metadata changes.
$(INSTALLED): requirements.lock setup.py
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 10), \
	  "UniSAR-TF needs Python 3.10 (TFX 1.15 declares <3.11); found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "uv==$(UV_VERSION)"
	# Bytecode compiled at install: the environment sets PYTHONDONTWRITEBYTECODE, and without
	# .pyc files every process recompiles Beam and TF from source (about 6 s for Beam alone).
	$(VENV)/bin/uv pip sync --quiet --compile-bytecode --python $(PY) requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .
	touch $@

# The main job: raw Beauty logs -> Beam -> TFRecords -> short UniSAR run -> test HR/NDCG.
run: $(INSTALLED)
	$(PY) -m pipeline.main_job

# The online path on the pushed model: Beauty's events into the embedded history store, the
# stand-in model server and the ranking service on 127.0.0.1 (docs/online.md). After `make run`.
serve: $(INSTALLED)
	$(PY) -m serving.local_stack

# The synthetic-data demo (planted structure; shows the model learning transitions).
demo: $(INSTALLED)
	$(PY) -m unisar_tf.tools.demo

# Test processes: pytest-xdist runs one module per worker (--dist loadscope, so a module's
# fixtures are built once); 2 = the cores of the project machine. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadscope

test: $(INSTALLED) redis-server lint
	$(PY) -m pytest tests -q $(PYTEST_PARALLEL) --durations=25

# The quick loop: everything not marked slow (CI runs `make test`, all of it).
test-fast: $(INSTALLED) redis-server lint
	$(PY) -m pytest tests -q $(PYTEST_PARALLEL) -m "not slow"

# ruff's lint and format check (settings in pyproject.toml); `make format` rewrites the files.
lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(INSTALLED)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The history store's tests run against a real redis-server (tests/serving/conftest.py starts
# one on 127.0.0.1); installed from the distribution's packages when it is missing.
redis-server:
	@tools/ensure-redis-server

# Parameter count of the Amazon preset at the Kindle vocabulary sizes of the paper.
param-count: $(INSTALLED)
	$(PY) -m unisar_tf.tools.param_count --preset amazon --num_items 61935 --num_words 1866 --num_users 68223

# Re-resolve the pinned stack after editing requirements.in.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "uv==$(UV_VERSION)"
	$(VENV)/bin/uv pip compile requirements.in -o requirements.lock \
	  --python-version 3.10 --python-platform x86_64-manylinux_2_28

clean:
	rm -rf $(VENV) build *.egg-info
