#!/usr/bin/env python
"""Classify images with a fine-tuned model: a folder, a CSV or files in, `id, <label>, score` rows out.

    python scripts/predict.py --model vit-rare-species --input photos/ --output predictions.csv --top_k 3

Same as `hf-classifier predict`.
"""

import sys

from hf_classifier.cli.commands import main

if __name__ == "__main__":
    # Through the CLI's entry point: the same one-line errors (and exit codes) as `hf-classifier predict`.
    sys.exit(main(["predict", *sys.argv[1:]]))
