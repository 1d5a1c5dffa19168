"""Training: step, optimizer groups and schedules, checkpoints, the trainer and the run entry point."""
