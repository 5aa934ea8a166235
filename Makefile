# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install, train the small Moving MNIST model (embedded data)
#   make test   - create .venv, install, run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/demo

.PHONY: venv demo test lint clean

$(BIN)/.installed: requirements.txt requirements-dev.txt setup.cfg
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	# Compile the oneDNN convolutions now (cached), and say if they are unavailable.
	$(BIN)/python -c "from msrnn_jax import backend; print(backend.summary())"
	touch $@

venv: $(BIN)/.installed

demo: venv
	mkdir -p $(dir $(WORKDIR))
	$(BIN)/python -m msrnn_jax.main --config=configs/mmnist.py:cpu --workdir=$(WORKDIR)

# Two workers, each test file in one of them (module fixtures are shared within a file).
test: venv
	$(BIN)/python -m pytest -n 2 --dist loadfile tests

lint: venv
	$(BIN)/ruff check msrnn_jax configs experiments tests

clean:
	rm -rf $(VENV) workdirs
