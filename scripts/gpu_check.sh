#!/usr/bin/env bash
# The GPU check, for a machine with one CUDA GPU, after the README's install:
#   python -m venv .venv && . .venv/bin/activate && ./install.sh && scripts/gpu_check.sh
# Runs `bgl bench gpu` (under 5 minutes on one GPU): one upper step of every registered solver
# on every task at the paper's sizes (CUDA-synchronised step time, torch.cuda.max_memory_allocated
# per solver), a one-worker Ray Train trial with the nccl backend (wall time), and `bgl develop`
# throughput on a 24-megapixel frame. Writes one Parquet file of rows,
# results/bench/gpu-<UTC stamp>.parquet (another folder: --output-dir DIR), and prints the tables.
# Without a CUDA device it prints one line saying so and exits 0, writing nothing. Extra arguments
# go to `bgl bench gpu` (e.g. --tasks enhance, --skip ray, --device cpu --quick for a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
exec python -m bgl.cli bench gpu "$@"
