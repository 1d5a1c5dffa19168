#!/usr/bin/env bash
# GPU benchmark suite: one table, under 8 minutes on one H100 / H200 (bench/gpu_suite.py says what it measures).
#   bench/gpu_suite.sh [--quick] [--peak-tflops 989] [--parts step,memory,sharding,matcher,export,aoti]
#   bench/gpu_suite.sh --allow-cpu --quick     # the same code paths on CPU with the tiny model
# PYTHON picks the interpreter (default: python); this checkout goes first on PYTHONPATH.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" bench/gpu_suite.py "$@"
