"""Engine layer: losses, metrics, training, evaluation, checkpoints, distributed."""
