"""Running cells: sweeps and their executors, per-cell process isolation, timing and memory measurement,
accuracy training, backend validation, and the environment every result records."""
