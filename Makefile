# Two entry points: `make demo` (install, then run the main job: train, then locate on a real photo) and
# `make test` (install, then run the tests).
# Both create the project-local virtual environment .venv on first use.
PYTHON ?= python3
# The CPU build of torch that lies on disk here; on a CUDA machine use e.g. `make demo TORCH=torch`.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test venv clean

$(BIN)/weakground: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

venv: $(BIN)/weakground

demo: venv
	$(BIN)/weakground train
	$(BIN)/weakground locate --demo astronaut "the astronaut" "the flag" "a space shuttle" --out runs/quickstart/locate.png

test: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
