"""Training engine: loop, optimiser and schedules, checkpoints, distributed helpers, logging."""
