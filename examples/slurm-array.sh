#!/bin/bash
# The paper grid over a Slurm job array: each array task runs one shard of the cells, then a dependent job
# merges the shards (docs/scaling.md explains every line).
#
#   sbatch examples/slurm-array.sh                        # prints: Submitted batch job 123456
#   sbatch --dependency=afterany:123456 --wrap \
#       ". .venv/bin/activate && python -m harness merge runs/paper/all runs/paper/shard-*"
#   sbatch --array=3 examples/slurm-array.sh              # resubmit one failed task: it resumes from its records
#
# Run it from the repository root (the venv and the runs/ folders are relative to it).
#SBATCH --job-name=transfer-bench
#SBATCH --array=1-4
#SBATCH --gres=gpu:2
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
SHARDS=4  # = the array size; fixed here so that a resubmitted single task still computes the same split
. .venv/bin/activate
pytest bench --profile paper -n 2 --shard "${SLURM_ARRAY_TASK_ID}/${SHARDS}" \
    --results-dir "runs/paper/shard-${SLURM_ARRAY_TASK_ID}" --cache-dir /shared/scratch/transfer-bench-cache
