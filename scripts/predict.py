#!/usr/bin/env python
"""Classify images with a fine-tuned model: a folder, a CSV or files in, `id, <label>, score` rows out.

    python scripts/predict.py --model vit-rare-species --input photos/ --output predictions.csv --top_k 3

Same as `hf-classifier predict`.
"""

import sys

from hf_classifier.cli import predict_command, setup_logging

if __name__ == "__main__":
    setup_logging()
    sys.exit(predict_command(sys.argv[1:]))
