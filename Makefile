# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast bench floor coverage gpu-check evaluate clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,test]'
	touch $@

# lxt (the transformer oracle of tests/test_lxt_vit.py) without its heavy optional requirements;
# what its import chain needs (transformers<4.54, tabulate) comes with the torch extra.
# ray and triton: the scale-out tests (tests/test_distributed.py, tests/test_triton_repo.py).
$(VENV)/.torch: $(VENV)/.core
	$(PY) -m pip install --quiet -e '.[cpu,test,torch,eval,ray,triton]'
	$(PY) -m pip install --quiet --no-deps lxt==2.1
	touch $@

## make demo: convert the bundled EfficientNet-Lite0 and explain the bundled photo -> demo-out/*.png
demo: $(VENV)/.core
	$(PY) tools/demo.py --out demo-out

## make test: the whole suite (numpy reference, Zennit cross-check, fuzzing, CLI end to end)
test: $(VENV)/.torch
	$(PY) -m pytest -q

## make test-fast: the suite without the PyTorch/Zennit parts
test-fast: $(VENV)/.core
	$(PY) -m pytest -q -m "not torch"

$(VENV)/.eval: $(VENV)/.core
	$(PY) -m pip install --quiet -e '.[cpu,test,eval]'
	touch $@

## make evaluate: LRP, CLRP, SGLRP and baselines measured on two-object photos -> docs/evaluation.md
## (pretrained EfficientNet-Lite0, scikit-image photos; 6.5 minutes on 2 idle cores, docs/evaluation.md;
## the full output, with every case's metrics and curves, goes to build/evaluation/out/)
evaluate: $(VENV)/.eval
	$(PY) tools/evaluate.py

bench: $(VENV)/.torch
	$(PY) tools/bench.py

## make floor: where the augmented models' time goes, and the floor the rules leave on this runtime
## (tools/floor.py; about 8 minutes on 2 idle cores; docs/performance.md)
floor: $(VENV)/.torch
	$(PY) tools/floor.py

$(VENV)/.coverage: $(VENV)/.torch
	$(PY) -m pip install --quiet --no-deps timm
	$(PY) -m pip install --quiet huggingface_hub safetensors pyyaml
	touch $@

## make coverage: architecture sweep -> docs/coverage.md (slow; not part of make test). Exports are
## cached in ~/.cache/sglrp-onnx-coverage; after an engine change: make coverage COVERAGE_ARGS='--phase check'
coverage: $(VENV)/.coverage
	$(PY) tools/coverage.py $(COVERAGE_ARGS)

## make gpu-check WHEEL=onnxruntime_gpu-....whl: on a GPU machine, offline (tools/gpu_check.py, docs/runtime.md)
gpu-check:
	tools/gpu_check.sh $(WHEEL) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) demo-out .pytest_cache .hypothesis
