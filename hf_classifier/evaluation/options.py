"""How inference runs (`predict`, `evaluate`): the choices and options their flags share. Apart from the
engine (`inference.py`) so that the argument dataclasses can name them without importing torch or a model."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

Tta = Literal["none", "flip"]
TTA_MODES: tuple[Tta, ...] = get_args(Tta)
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
Device = Literal["auto", "cpu", "cuda", "mps"]


@dataclass(frozen=True)
class InferenceOptions:
    """How `classify` runs: the flags `predict` and `evaluate` share (of the same names), passed whole.

    `tta="flip"` averages the probabilities of the image and its mirror image. `precision="auto"`: bf16
    on a GPU that has it, fp32 elsewhere. `distributed`: under `accelerate launch`/`torchrun`, the
    processes share the images (see `classify`)."""

    batch_size: int = 32
    device: Device = "auto"
    num_workers: int = 0
    tta: Tta = "none"
    precision: Precision = "auto"
    progress: bool = False
    distributed: bool = False

    def __post_init__(self) -> None:
        if self.tta not in TTA_MODES:
            raise ValueError(f"--tta must be one of {', '.join(TTA_MODES)}, got {self.tta!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @classmethod
    def of(cls, arguments: Any, **overrides: Any) -> InferenceOptions:
        """The options among `arguments`' attributes (e.g. the predict or evaluate flags), with `overrides`."""
        values = {f.name: getattr(arguments, f.name) for f in fields(cls) if hasattr(arguments, f.name)}
        return cls(**{**values, **overrides})
