"""Transforms: the checkpoint's own preprocessing, augmentation presets, previews (no torchvision)."""
