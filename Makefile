# The two commands: `make demo` (train, test clean and under attack, heatmaps, ONNX export and report.html on
# built-in data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) main.py --config configs/demo.json --mode all
	$(PY) main.py --config configs/demo.json --mode export

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/speed.py --backbone vit_small_patch14_dinov2 --image_size 112 --batch_size 8 --step_train 10

clean:
	rm -rf runs data/demo
