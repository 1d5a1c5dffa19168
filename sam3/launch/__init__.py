"""Launchers that run `train.py` somewhere else than the current process (SLURM through submitit)."""
