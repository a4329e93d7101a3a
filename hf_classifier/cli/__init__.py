"""`hf-classifier COMMAND`: argument dataclasses and thin commands over the library."""

from hf_classifier.cli.commands import main

__all__ = ["main"]
