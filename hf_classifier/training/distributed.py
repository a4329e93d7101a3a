"""Several processes (`accelerate launch`, `torchrun`): who does what, and where things are written.

Training relies on Trainer/Accelerate. `evaluate` and `predict` split the images between the
processes, gather the probabilities, and only the main process writes files.
"""

from __future__ import annotations

import os

import torch
from accelerate import PartialState


def process_state() -> PartialState:
    """Accelerate's view of the processes. On a machine without GPUs, several processes form a gloo
    group only when Accelerate is told to use the CPU."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=several and not torch.cuda.is_available())


def is_main_process() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or process_state().is_main_process
