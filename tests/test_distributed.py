"""Under `accelerate launch` with 2 CPU processes (gloo): freezing and unfreezing stay in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import fast_training_flags, make_image_tree

SCRIPTS = Path(__file__).parent / "scripts"


def accelerate_launch(script: Path, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    # --multi_gpu selects Accelerate's torchrun launcher; on a machine without GPUs the training
    # arguments switch to the CPU and Accelerate forms a gloo group (`--cpu` would start one process).
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(script),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPTS.parent)}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def test_freeze_then_unfreeze_under_two_processes(vit_checkpoint, tmp_path):
    data = make_image_tree(tmp_path / "data", {"a": 12, "b": 12, "c": 12})
    out = tmp_path / "ranks"
    out.mkdir()
    result = accelerate_launch(
        SCRIPTS / "ddp_freezing.py",
        str(out),
        "--data_dir",
        str(data),
        "--model_name_or_path",
        str(vit_checkpoint),
        *fast_training_flags(
            tmp_path / "run",
            num_train_epochs=3,
            per_device_train_batch_size=4,
            finetune_strategy="freeze_then_unfreeze",
            freeze_epochs=1,
            learning_rate="5e-3",
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # identical weights on both processes after every epoch
    epochs = ranks[0]
    head_only, everything = epochs["1"]["trainable"], epochs["2"]["trainable"]
    assert head_only == 2 and everything > head_only
    assert epochs["2"]["backbone_sum"] != epochs["1"]["backbone_sum"]  # unfrozen gradients flowed and synced
    assert epochs["3"]["backbone_sum"] != epochs["2"]["backbone_sum"]
    assert (tmp_path / "run" / "model.safetensors").is_file()
