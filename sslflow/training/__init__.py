"""What the training tasks need around the engine: per-epoch checkpoints, model files, progress lines."""
