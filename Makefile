# vae_jax: every user-facing command. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXP ?= mnist_z20
WORKDIR ?= runs/$(EXP)
ARGS ?=
DATASET ?= mnist
BENCH_JSON ?= runs/bench.json
BENCH_ARGS ?=
TEST_WORKERS ?= 2
PEER_VENV ?= .venv-torch
PEER_PYTHON ?= $(wildcard $(PEER_VENV)/bin/python)
TORCH ?= torch
SWEEP ?= latent_noise
TFDS_DATA_DIR ?= $(HOME)/tensorflow_datasets

.PHONY: help install train eval sweep experiments keys bench bench-sweep peer-env test test-slow lint format data clean

help:
	@echo "make install                 create $(VENV) and install vae_jax (editable, dev extras)"
	@echo "make train EXP=mnist_z20 [WORKDIR=runs/EXP] [ARGS='--config.KEY=VALUE ...']"
	@echo "make eval EXP=mnist_z20 [WORKDIR=runs/EXP] [ARGS='--config.eval.iwae_k=5000']"
	@echo "                             test ELBO, IWAE NLL, rate, active units, figures"
	@echo "make sweep SWEEP=latent_noise [ARGS='--shard 0/2 --vmap on --config.KEY=VALUE']"
	@echo "                             train a sweep's points (resumable); summary and plots"
	@echo "make experiments             list the experiments and sweeps"
	@echo "make bench [BENCH_JSON=runs/bench.json] [BENCH_ARGS='--batch 100 --reps 5']"
	@echo "                             training images/s, compile time, memory, GFLOP/s;"
	@echo "                             with $(PEER_VENV) (make peer-env), PyTorch beside it and the ratio"
	@echo "make peer-env [TORCH=torch==2.13.0]   a venv with PyTorch for make bench's peer"
	@echo "make bench-sweep             the same for 1, 2, 3, 5 models trained together (vmap)"
	@echo "make test                    the test suite (CPU, 2 processes, ~14 min on 2 cores)"
	@echo "make test-slow               end to end: the seed figure, multi-process runs, the README (~10 min)"
	@echo "make lint / make format      ruff"
	@echo "make data [DATASET=mnist] [TFDS_DATA_DIR=dir]   download and prepare a TFDS dataset"
	@echo "make keys                    every config key: default, allowed values, meaning"

install:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'

$(PY):
	@echo "No virtual environment at $(VENV): run 'make install' first." >&2; exit 1

train: | $(PY)
	$(PY) -m vae_jax train $(EXP) --workdir $(WORKDIR) $(ARGS)

eval: | $(PY)
	$(PY) -m vae_jax eval $(EXP) --workdir $(WORKDIR) $(ARGS)

sweep: | $(PY)
	$(PY) -m vae_jax sweep $(SWEEP) $(ARGS)

experiments: | $(PY)
	@$(PY) -m vae_jax list

keys: | $(PY)
	@$(PY) -m vae_jax list --keys

bench: | $(PY)
	$(PY) -m vae_jax.bench --json $(BENCH_JSON) $(if $(PEER_PYTHON),--peer $(PEER_PYTHON) --rounds 2) $(BENCH_ARGS)

# PyTorch for make bench's peer (benchmarks/pytorch_seed_vae.py), kept out of vae_jax's venv.
peer-env:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install numpy '$(TORCH)'

# K models trained together under jax.vmap, as a sweep trains them, vs. one model.
bench-sweep: | $(PY)
	$(PY) -m vae_jax.bench --experiments mnist_z20 mnist_mlp_z20 --batch 100 --models 1 2 3 5 \
		--json runs/bench_sweep.json $(BENCH_ARGS)

# pytest-xdist: test files spread over TEST_WORKERS processes (a file's tests stay together, so
# module fixtures are built once). On 2 cores, 2 workers: 826-877 s against 1,332 s one by one,
# 3 workers 914 s; the slow tests (mostly several processes each) 517 s against 592 s.
test: | $(PY)
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

test-slow: | $(PY)
	$(PY) -m pytest -q -m slow -n $(TEST_WORKERS) --dist loadfile

lint: | $(PY)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: | $(PY)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# TFDS's download_and_prepare needs TensorFlow and internet; `vae_jax data` installs TensorFlow
# into its own environment (in ~/.cache/vae_jax), never into the training one. make train does
# this by itself when the dataset is missing from TFDS's default data dir.
data: | $(PY)
	$(PY) -m vae_jax data $(DATASET) --data-dir $(TFDS_DATA_DIR)

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info
