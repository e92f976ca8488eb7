# Two entry points on a fresh machine (each creates its own virtual environment in .venv):
#   make demo   install, then compress a real SNN (N-MNIST CNN from the NIR paper) and print accuracy before/after
#   make test   install with the test and framework-bridge extras, then run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SHARED ?= ../shared

.PHONY: demo test install install-test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

# torch first and pinned: the CPU wheel (a range would pull a multi-GB CUDA build); norse without its
# dependencies because its torchvision does not import beside this torch (norse itself does not need it);
# spikingjelly likewise (its activation_based neuron/layer/functional modules do not import torchvision).
install-test: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,torch]'
	$(BIN)/pip install -q --no-deps norse==1.1.0 spikingjelly==0.0.0.0.14

demo: install
	SHARED=$(SHARED) BIN=$(BIN) bash examples/demo.sh

test: install-test
	SBC_SHARED=$(SHARED) $(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_sim.py
	$(BIN)/python benchmarks/bench_compress.py --quick
	$(BIN)/python benchmarks/bad_input_table.py

clean:
	rm -rf $(VENV) out
