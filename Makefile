# xrg: `make book` builds the book on the embedded data, `make test` runs the tests.
# Both create .venv with pip when it is missing. PROFILE = tiny | cpu | paper.
PROFILE ?= cpu
PYTHON  := .venv/bin/python
STAMP   := .venv/.installed

.PHONY: venv test book data notebooks html clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@echo ">> creating .venv and installing requirements (a few minutes the first time)"
	test -x $(PYTHON) || python3 -m venv .venv
	$(PYTHON) -m pip install --progress-bar off -q --upgrade pip
	$(PYTHON) -m pip install --progress-bar off -r requirements.txt
	$(PYTHON) -m pip install --progress-bar off --no-deps -r requirements-nodeps.txt
	$(PYTHON) -m pip install --progress-bar off --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: venv
	$(PYTHON) -m pytest -q --timeout=900 tests

# The whole book for one profile: data build, notebooks by papermill, Jupyter Book HTML.
book: venv
	$(PYTHON) -m xrg.cli book run --profile $(PROFILE)
	$(PYTHON) -m xrg.cli book build

data: venv
	$(PYTHON) -m xrg.cli data build --profile $(PROFILE) --out data/$(PROFILE)

clean:
	rm -rf _build book/executed
