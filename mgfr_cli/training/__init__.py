"""Training: data, degradations, the config, the loop, evaluation."""
