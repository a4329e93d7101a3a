"""Training: `train()` top to bottom over the Trainer subclass, checkpoints, several processes."""
