"""Run under `accelerate launch --num_processes 2`: train with freezing, write each rank's weights
checksum and trainable-tensor count per epoch to OUT/rank<N>.json (see test_distributed.py)."""

import json
import sys
from pathlib import Path

from transformers import TrainerCallback

from hf_classifier.cli.arguments import ClassifierTrainingArguments, DataArguments, ModelArguments, parse_args
from hf_classifier.training import distributed
from hf_classifier.training.run import train


class Checksums(TrainerCallback):
    def __init__(self, out: Path):
        self.out, self.epochs = out, {}

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        backbone = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
        self.epochs[int(round(state.epoch))] = {
            "backbone_sum": float(sum(p.detach().double().sum() for p in backbone)),
            "head_sum": float(model.classifier.weight.detach().double().sum()),
            "trainable": sum(1 for p in model.parameters() if p.requires_grad),
        }

    def on_train_end(self, args, state, control, **kwargs):
        self.epochs["exit_release_registered"] = distributed._release_registered
        (self.out / f"rank{args.process_index}.json").write_text(json.dumps(self.epochs))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    args = parse_args((DataArguments, ModelArguments, ClassifierTrainingArguments), sys.argv[2:])
    train(*args, callbacks=[Checksums(out)])
