# xrg: `make book` builds the book on the embedded data, `make test` runs the tests.
# Both create .venv with pip when it is missing. PROFILE = tiny | cpu | paper.
# `make test-fast` skips the slow book tests, `make lint` runs ruff.
# `make lab` opens JupyterLab on 127.0.0.1 to run the notebooks (and their explorers) live.
PROFILE ?= cpu
PYTHON  := .venv/bin/python
STAMP   := .venv/.installed

.PHONY: venv test test-fast lint book data notebooks html lab clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@echo ">> creating .venv and installing requirements (a few minutes the first time)"
	test -x $(PYTHON) || python3 -m venv .venv
	$(PYTHON) -m pip install --progress-bar off -q --upgrade pip
	$(PYTHON) -m pip install --progress-bar off -r requirements.txt
	$(PYTHON) -m pip install --progress-bar off --no-deps -r requirements-nodeps.txt
	$(PYTHON) -m pip install --progress-bar off --no-deps --no-build-isolation -e .
	touch $(STAMP)

# --timeout: seconds per test, fixture set-up included; the tests behind the session-wide tiny book
# get a longer ceiling of their own (BOOK_TEST_TIMEOUT in tests/conftest.py).
test: venv
	$(PYTHON) -m pytest -q --timeout=900 --durations=8 tests

# The inner loop: everything but the tests marked slow (the tiny book, its notebooks, the browser test).
test-fast: venv
	$(PYTHON) -m pytest -q --timeout=900 -m "not slow" tests

# Ruff with the settings in pyproject.toml (tests/test_lint.py runs the same two checks).
lint: venv
	$(PYTHON) -m ruff check xrg tests notebooks
	$(PYTHON) -m ruff format --check xrg tests notebooks

# The whole book for one profile: data build, notebooks by papermill, Jupyter Book HTML.
book: venv
	$(PYTHON) -m xrg.cli book run --profile $(PROFILE)
	$(PYTHON) -m xrg.cli book build

data: venv
	$(PYTHON) -m xrg.cli data build --profile $(PROFILE) --out data/$(PROFILE)

# JupyterLab on this machine only (127.0.0.1; --allow-root when run as root, as in a container),
# rooted at the project and opened on notebooks/. The notebooks' default parameters are the tiny
# profile's (../data/tiny, ../runs/tiny/...; a run that is missing is trained when its notebook runs).
# For the cpu runs of `make book`, edit the parameters cell: profile = "cpu", data_dir = "../data/cpu",
# run_dir = "../runs/cpu/xraygan"; in 07 also pggan_dir = "../runs/cpu/pggan", search_dir =
# "../runs/cpu/search", experiment_dir = "../runs/cpu/experiments".
lab: venv
	$(PYTHON) -m jupyter lab --ip=127.0.0.1 --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks \
		$(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf _build book/executed
