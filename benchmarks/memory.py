#!/usr/bin/env python
"""Peak memory against the number of images, for N and k x N images (the same photos listed k
times), each measured in a fresh process. It must not grow with the data.

- `prepared`: `prepare` (Arrow copy) then two training epochs of the data path;
- `streaming`: the photos written as WebDataset shards, then two passes of the `--streaming` training
  stream (shuffle buffer, decode, augmentation) through a DataLoader.

    python benchmarks/memory.py --data_dir ../shared/data/hymenoptera --factors 1,4 \
        --json benchmarks/results/memory.json
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class AnonymousMemoryPeak:
    """Peak of RssAnon (heap, tensors, buffers), sampled every 10 ms. Peak RSS also counts the pages
    of memory-mapped Arrow files that were read, which the kernel drops whenever it needs the memory:
    they grow with the data read, but are a cache, not a cost."""

    def __init__(self):
        import threading

        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self._sample()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.peak_kib / 1024


def _loader(dataset, **kwargs):
    import torch
    from torch.utils.data import DataLoader

    def collate(batch):
        return torch.stack([x["pixel_values"] for x in batch])

    return DataLoader(dataset, batch_size=32, collate_fn=collate, **kwargs)


def _transform():
    from hf_classifier.transforms.pipeline import ImageTransform, get_preset
    from hf_classifier.transforms.preview import default_spec

    return ImageTransform(default_spec(224), get_preset("light"))


def child_prepared(listing: str, cache: str, _buffer_size: int) -> None:
    from hf_classifier.data.prepared import prepare_data, prepared_size
    from hf_classifier.data.sources import from_metadata_csv
    from hf_classifier.transforms.pipeline import ExampleTransform

    data = from_metadata_csv(listing, label_column="label")
    data, _ = prepare_data(data, prepared_size(224), cache_dir=cache, num_proc=1)
    loader = _loader(data.splits["train"].with_transform(ExampleTransform(_transform())))
    for _ in range(2):
        for _ in loader:
            pass


def child_streaming(shards: str, cache: str, buffer_size: int) -> None:
    from hf_classifier.cli.arguments import DataArguments
    from hf_classifier.data.streaming import StreamTransform, load_streaming_data, training_stream

    args = DataArguments(data_dir=shards, streaming=True, shuffle_buffer_size=buffer_size)
    source = load_streaming_data(args, seed=0, cache_dir=cache).splits["train"]
    stream = training_stream(source, seed=0, buffer_size=buffer_size, endless=False)
    mapped = stream.map(
        StreamTransform(_transform()), batched=True, batch_size=32, remove_columns=stream.column_names
    )
    loader = _loader(mapped)
    for epoch in range(2):
        mapped.set_epoch(epoch)
        for _ in loader:
            pass


def write_shards(folder: Path, photos: list[Path], factor: int, per_shard: int = 500) -> int:
    folder.mkdir(parents=True)
    classes = sorted({p.parent.name for p in photos})
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    samples = [p for _ in range(factor) for p in photos]
    for split, items in (("train", samples), ("validation", photos[:32])):
        for shard, start in enumerate(range(0, len(items), per_shard)):
            with tarfile.open(folder / f"{split}-{shard:05d}.tar", "w") as tar:
                for i, path in enumerate(items[start : start + per_shard], start):
                    for extension, payload in (
                        ("jpg", path.read_bytes()),
                        ("cls", str(classes.index(path.parent.name)).encode()),
                    ):
                        info = tarfile.TarInfo(f"{i:07d}.{extension}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
    return len(samples)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--factors", default="1,4")
    parser.add_argument("--modes", default="prepared,streaming")
    parser.add_argument("--shuffle_buffer_size", type=int, default=2000)
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        import torch

        torch.set_num_threads(1)
        mode, source, cache, buffer_size = args.child
        anonymous = AnonymousMemoryPeak()
        (child_prepared if mode == "prepared" else child_streaming)(source, cache, int(buffer_size))
        peak_anonymous = anonymous.stop()
        print(
            json.dumps(
                {
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "peak_anonymous_mib": peak_anonymous,
                }
            )
        )
        return

    from hf_classifier.data.resolve import image_files_below

    root = Path(args.data_dir).resolve()
    photos = image_files_below(root)[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="hf_classifier_memory_") as tmp:
        for mode in args.modes.split(","):
            for factor in (int(f) for f in args.factors.split(",")):
                if mode == "prepared":
                    source = Path(tmp) / f"list_{factor}.csv"
                    lines = [f"{path},{path.parent.name}" for _ in range(factor) for path in photos]
                    source.write_text("file_path,label\n" + "\n".join(lines) + "\n")
                    images = len(lines)
                else:
                    source = Path(tmp) / f"shards_{factor}"
                    images = write_shards(source, photos, factor)
                cache = str(Path(tmp) / f"cache_{mode}_{factor}")
                output = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--data_dir",
                        str(root),
                        "--child",
                        mode,
                        str(source),
                        cache,
                        str(args.shuffle_buffer_size),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                peaks = json.loads(output.stdout.strip().splitlines()[-1])
                rows.append({"mode": mode, "images": images, **{k: round(v, 1) for k, v in peaks.items()}})
                print(json.dumps(rows[-1]), flush=True)
    growth = {}
    for mode in args.modes.split(","):
        mine = [row for row in rows if row["mode"] == mode]
        growth[mode] = {
            key: round(mine[-1][key] / mine[0][key], 3) for key in ("peak_anonymous_mib", "peak_rss_mib")
        }
    results = {"command": " ".join(sys.argv), "rows": rows, "growth": growth}
    print(json.dumps(results, indent=2))
    if args.json:
        from hf_classifier.io_utils import write_json

        write_json(args.json, results)


if __name__ == "__main__":
    main()
