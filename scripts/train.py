#!/usr/bin/env python
"""Fine-tune a Hub checkpoint on an image folder, a metadata CSV or a data set.

    python scripts/train.py --data_dir rare_species --label_column family \
        --model_name_or_path google/vit-base-patch16-224-in21k --output_dir vit-rare-species
    accelerate launch scripts/train.py configs/vit.yaml          # several GPUs, same flags

Same as `hf-classifier train`; `--help` lists every flag (all TrainingArguments flags included).
"""

import sys

from hf_classifier.cli.commands import main

if __name__ == "__main__":
    # Through the CLI's entry point: the same one-line errors (and exit codes) as `hf-classifier train`.
    sys.exit(main(["train", *sys.argv[1:]]))
