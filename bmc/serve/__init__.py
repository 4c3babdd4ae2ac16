"""Serving a model folder: prediction and review flags, backends, attribution maps, safe uploads."""
