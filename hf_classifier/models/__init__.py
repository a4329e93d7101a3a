"""Models: build a classifier from a checkpoint, map parameters to depth, plan fine-tuning, regularise."""
