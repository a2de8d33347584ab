"""Training: run config, optimizer and schedules, checkpoints, callbacks and the loop."""
