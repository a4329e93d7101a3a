"""Run under `accelerate launch`: `record_shard_reads.py OUT (train flags)` trains like `hf-classifier train`
and appends the name of every `.tar` shard this process (or one of its loader workers) opens to
OUT/rank<N>.txt (see test_distributed.py)."""

import builtins
import io
import os
import sys
from pathlib import Path

_open = builtins.open
_io_open = io.open


def _recording(opener):
    def open_and_record(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and str(file).endswith(".tar"):
            log = Path(sys.argv[1]) / f"rank{os.environ.get('RANK', '0')}.txt"
            with _open(log, "a", encoding="utf-8") as handle:  # one line per open, from any worker
                handle.write(Path(file).name + "\n")
        return opener(file, *args, **kwargs)

    return open_and_record


if __name__ == "__main__":
    builtins.open = _recording(_open)
    io.open = _recording(_io_open)
    from hf_classifier.cli.commands import main

    sys.exit(main(["train", *sys.argv[2:]]))
