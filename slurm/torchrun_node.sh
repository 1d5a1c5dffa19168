#!/usr/bin/env bash
# Run by train.sbatch / eval.sbatch as the one srun task of each node: torchrun starts this node's
# ranks and joins the c10d rendezvous hosted on the job's first node (RDZV_HOST, exported by the
# batch script). Arguments go to train.py.
set -euo pipefail
: "${RDZV_HOST:?set by the batch script}"
nproc="${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}"
port="${RDZV_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
is_host=false
if [ "${SLURM_NODEID}" = 0 ]; then is_host=true; fi
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="${SLURM_JOB_NUM_NODES}" --nproc-per-node="${nproc}" \
    --rdzv-id="${SLURM_JOB_ID}" --rdzv-backend=c10d --rdzv-endpoint="${RDZV_HOST}:${port}" \
    --rdzv-conf="is_host=${is_host}" \
    train.py "$@"
