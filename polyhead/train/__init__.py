"""Multi-task training: config, data, task sampling, loss weighting, trainer, export."""
