"""Training a model folder: arguments, a run's data, the Trainer, measuring, writing and publishing it."""
