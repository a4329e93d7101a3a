"""`python kill_at_step.py STEP (train flags)`: train, and SIGKILL this process at the end of optimizer
step STEP, as a crash or a pre-empted machine would (see test_faults.py)."""

import os
import signal
import sys

from transformers import TrainerCallback

from hf_classifier.cli.arguments import ClassifierTrainingArguments, DataArguments, ModelArguments, parse_args
from hf_classifier.training.run import train


class KillAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    args = parse_args((DataArguments, ModelArguments, ClassifierTrainingArguments), sys.argv[2:])
    train(*args, callbacks=[KillAtStep(int(sys.argv[1]))])
