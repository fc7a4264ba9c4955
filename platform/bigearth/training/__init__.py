"""Training with Ray Train: typed configs, the per-worker loop, metrics and curves, the trainer entrypoint."""
