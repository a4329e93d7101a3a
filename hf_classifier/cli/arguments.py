"""Command-line arguments as dataclasses, parsed by `HfArgumentParser` from flags or a YAML/JSON file.

`train` takes `DataArguments`, `ModelArguments` and `ClassifierTrainingArguments` (every
`TrainingArguments` flag, with defaults suited to image classification).
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, TrainingArguments

from hf_classifier.data.images import available_cpus
from hf_classifier.data.schema import ImageData
from hf_classifier.data.sources import load_image_data
from hf_classifier.evaluation.options import Device, Precision, Tta
from hf_classifier.hierarchy import DEFAULT_PARENT_COLUMN, STRATEGY_HIERARCHY, Hierarchy
from hf_classifier.models.finetuning import FinetuneStrategy
from hf_classifier.models.regularization import ClassWeighting
from hf_classifier.transforms.pipeline import Augmentation

logger = logging.getLogger(__name__)

CONFIG_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def keywords_for(function: Callable[..., Any], *arguments: Any, **given: Any) -> dict[str, Any]:
    """The keyword-only parameters of `function` that the argument dataclasses `arguments` have a field
    of the same name for, with its value, then `given`: the flags handed over whole, by name, rather
    than relayed one by one."""
    names = [name for name, p in inspect.signature(function).parameters.items() if p.kind is p.KEYWORD_ONLY]
    values = {name: getattr(source, name) for source in arguments for name in names if hasattr(source, name)}
    return {**values, **given}


@dataclass
class DataSourceArguments:
    """Where the images and labels come from: exactly one of data_dir, metadata_csv, dataset_name,
    or split_dir alone. Shared by train, inspect, split and augment-preview."""

    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder with one subfolder per class (e.g. chordata_ardeidae/), optionally inside "
            "train/ validation/ test/ folders. A metadata.csv beside the class folders is read too."
        },
    )
    metadata_csv: str | None = field(
        default=None, metadata={"help": "CSV listing the images (Rare Species metadata.csv format)."}
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "Folder the CSV's image paths are relative to (default: the CSV's folder)."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hub data set id or a folder written by `Dataset.save_to_disk`."}
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The Hub data set's configuration."}
    )
    image_column: str | None = field(
        default=None,
        metadata={
            "help": "Column with the images or their paths (default: file_path, file_name, image or path)."
        },
    )
    label_column: str | None = field(
        default=None,
        metadata={
            "help": "Column with the class to predict, e.g. family. Default: the class folder for --data_dir, "
            "'label' for CSVs and Hub data sets."
        },
    )
    parent_column: str | None = field(
        default=None,
        metadata={
            "help": "Column with a coarser label over the classes (e.g. order): its metrics, its prediction "
            f"column, and what --hierarchy uses. Default: {DEFAULT_PARENT_COLUMN}, when the data has it "
            "(a column, or class folders named phylum_family such as chordata_ardeidae)."
        },
    )
    split_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder with train.csv / validation.csv / test.csv written earlier (e.g. OUTPUT_DIR/splits)."
        },
    )

    def load_data(self, cache_dir: str | None = None, token: str | None = None) -> ImageData:
        return load_image_data(**keywords_for(load_image_data, self, cache_dir=cache_dir, token=token))


# --prepare's spellings (a YAML `true` arrives as "True").
PREPARE_CHOICES: dict[str, bool | str] = {
    "auto": "auto",
    **dict.fromkeys(("true", "yes", "1"), True),
    **dict.fromkeys(("false", "no", "0"), False),
}


@dataclass
class DataArguments(DataSourceArguments):
    """The data source plus what training does with it."""

    validation_split_ratio: float = field(
        default=0.1,
        metadata={
            "help": "Share of the training images held out for validation when the data has no validation split."
        },
    )
    skip_bad_images: bool = field(
        default=False,
        metadata={
            "help": "Skip unreadable images and list them in OUTPUT_DIR/bad_images.csv instead of stopping."
        },
    )
    check_images: bool = field(
        default=True,
        metadata={"help": "Decode every image once before training so bad files show up at once."},
    )
    augmentation: Augmentation = field(default="light", metadata={"help": "Training augmentation preset."})
    # Read as text (HfArgumentParser gives a flag one type) and turned into True, False or "auto" by
    # __post_init__; `--prepare` alone means true.
    prepare: str = field(
        default="auto",
        metadata={
            "help": "Decode every photo once into a pre-resized Arrow copy (cached, reused by later epochs "
            "and runs): much faster epochs on full-size photos. auto: when they are cached already, or "
            "read more than once (several epochs, not streamed) with twice the copies' size free on the "
            "cache's disk; true (or the flag alone): always; false: never.",
            "nargs": "?",
            "const": "true",
        },
    )
    prepared_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where prepared copies are kept (default: ~/.cache/hf_classifier/prepared)."},
    )
    prepare_num_proc: int | None = field(
        default=None, metadata={"help": "Processes for --prepare (default: all CPUs)."}
    )
    card_dataset_id: str | None = field(
        default=None,
        metadata={
            "help": "Hub id of the training data, named in the model card. Default: --dataset_name, or "
            "imageomics/rare-species for Rare Species metadata; 'none' names no data set."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only this many training images (quick experiments, debugging)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only this many validation/test images."}
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the training images (WebDataset .tar shards in --data_dir, or a Hub data set) "
            "instead of loading them: for data larger than the disk. Needs --max_steps."
        },
    )
    shuffle_buffer_size: int = field(
        default=2000, metadata={"help": "--streaming: images held in the shuffling buffer."}
    )
    class_names: str | None = field(
        default=None,
        metadata={
            "help": "--streaming: the class names in label-index order, comma-separated or a file with one "
            "per line (default: classes.txt beside the shards, or the Hub data set's ClassLabel)."
        },
    )

    def __post_init__(self) -> None:
        prepare = PREPARE_CHOICES.get(str(self.prepare).lower())
        if prepare is None:
            raise ValueError(f"--prepare takes auto, true or false, got {self.prepare!r}")
        self.prepare = prepare
        if self.streaming and (self.prepare is True or self.split_dir or self.metadata_csv):
            raise ValueError(
                "--streaming reads WebDataset shards (--data_dir) or a Hub data set (--dataset_name); "
                "it does not combine with --prepare, --split_dir or --metadata_csv."
            )
        if not 0.0 < self.validation_split_ratio < 1.0:
            raise ValueError(
                f"--validation_split_ratio must be between 0 and 1, got {self.validation_split_ratio}"
            )


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="google/vit-base-patch16-224-in21k",
        metadata={
            "help": "Checkpoint to fine-tune: a Hub id or a local folder (config + weights + preprocessor)."
        },
    )
    from_config: bool = field(
        default=False,
        metadata={
            "help": "Build a randomly initialised model from the checkpoint's config (no weights are read)."
        },
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Take the image processor from here instead of the checkpoint."}
    )
    model_revision: str = field(
        default="main", metadata={"help": "Branch, tag or commit of the Hub checkpoint."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})
    token: str | None = field(
        default=None,
        metadata={"help": "Hub token (default: HF_TOKEN or the saved login). Never written to disk."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow checkpoints that ship their own modelling code. Off unless asked."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel: sdpa, eager, flash_attention_2, ... (default: transformers' choice, "
            "SDPA where the model supports it)."
        },
    )
    drop_path_rate: float | None = field(
        default=None,
        metadata={
            "help": "Stochastic depth: drop residual branches with this probability (for architectures "
            "that have it: ConvNeXt, Swin, BEiT, DINOv2, EfficientNet, ...)."
        },
    )

    def hub_kwargs(self) -> dict[str, Any]:
        return {
            "revision": self.model_revision,
            "cache_dir": self.cache_dir,
            "token": self.token,
            "trust_remote_code": self.trust_remote_code,
            **({"attn_implementation": self.attn_implementation} if self.attn_implementation else {}),
        }


def redeclared(base: type, name: str, **default: Any) -> Any:
    """Re-declare the field `name` of the dataclass `base` with another `default=` (or
    `default_factory=`), keeping its help text."""
    return field(metadata=base.__dataclass_fields__[name].metadata, **default)


def _training_field(name: str, default: Any) -> Any:
    return redeclared(TrainingArguments, name, default=default)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_bf16_supported()


def _cuda_capability() -> tuple[int, int]:
    import torch

    return torch.cuda.get_device_capability()


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup") -> int | None:
    """The container's CPU limit (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us`), rounded up; None
    when there is none. `docker run --cpus 4` on a 64-core host leaves the affinity mask at 64."""
    root = Path(root)
    try:
        if (root / "cpu.max").is_file():
            quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
            if quota == "max":
                return None
            return max(1, -(-int(quota) // int(period or 100_000)))
        v1 = root / "cpu"
        if (v1 / "cpu.cfs_quota_us").is_file():
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            period = int((v1 / "cpu.cfs_period_us").read_text())
            return max(1, -(-quota // period)) if quota > 0 else None
    except (OSError, ValueError):
        pass
    return None


def default_num_workers() -> int:
    """Loader workers per process: the CPUs this process may use (affinity mask and container quota),
    shared among the training processes on this machine (torchrun and accelerate set
    LOCAL_WORLD_SIZE), less one per process for the main process (the model's step, and the thread
    that pins batches). 8 processes on 64 cores get 7 workers each."""
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    cpus = min(available_cpus(), cpu_quota() or available_cpus())
    return max(1, cpus // local_processes - 1)


# A training batch in shared memory: uint8 RGB at the usual 224 x 224 (larger inputs need more).
BYTES_PER_IMAGE = 3 * 224 * 224


def shared_memory_free(path: str = "/dev/shm") -> int | None:
    """Free bytes in /dev/shm, through which loader workers hand their batches over (None: no such mount)."""
    import shutil

    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def default_batch_size() -> int:
    """32 on a CPU; on a GPU, larger where the memory allows (32 images keep a big GPU launch-bound)."""
    import torch

    if not torch.cuda.is_available():
        return 32
    # This process's own GPU: reading another's properties would not create a context there, but be exact.
    memory_gib = torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK") or 0)).total_memory / 2**30
    return 128 if memory_gib >= 64 else 64 if memory_gib >= 20 else 32


def sharding_backend(args: TrainingArguments) -> str | None:
    """The sharding backend, "deepspeed", "fsdp1" or "fsdp2", when the run shards the model (set by `accelerate launch` through
    the environment, or by the --deepspeed / --fsdp flags); None otherwise."""
    if args.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        config = args.fsdp_config if isinstance(args.fsdp_config, dict) else {}
        version = os.environ.get("FSDP_VERSION") or config.get("version") or config.get("fsdp_version") or 1
        return f"fsdp{int(version)}"
    return None


@dataclass
class ClassifierTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults for fine-tuning an image classifier."""

    output_dir: str = field(
        metadata={"help": "Where the model, metrics, splits and checkpoints are written."}
    )
    num_train_epochs: float = _training_field("num_train_epochs", 5.0)
    learning_rate: float = _training_field("learning_rate", 5e-5)
    # None = from the device: 32 (eval 64) on a CPU, up to 128 (eval 256) on a GPU (default_batch_size).
    per_device_train_batch_size: int | None = _training_field("per_device_train_batch_size", None)
    per_device_eval_batch_size: int | None = _training_field("per_device_eval_batch_size", None)
    lr_scheduler_type: str = _training_field("lr_scheduler_type", "cosine")
    warmup_steps: float = _training_field("warmup_steps", 0.1)
    weight_decay: float = _training_field("weight_decay", 0.05)
    eval_strategy: str = _training_field("eval_strategy", "epoch")
    save_strategy: str = _training_field("save_strategy", "epoch")
    logging_steps: float = _training_field("logging_steps", 20)
    save_total_limit: int | None = _training_field("save_total_limit", 2)
    load_best_model_at_end: bool = _training_field("load_best_model_at_end", True)
    # One push of the finished model: see _check_hub_strategy.
    hub_strategy: str = _training_field("hub_strategy", "end")
    metric_for_best_model: str | None = _training_field("metric_for_best_model", "f1_macro")
    greater_is_better: bool | None = _training_field("greater_is_better", True)
    # The image column must survive until our transform turns it into pixel_values.
    remove_unused_columns: bool = _training_field("remove_unused_columns", False)
    dataloader_num_workers: int = redeclared(
        TrainingArguments, "dataloader_num_workers", default_factory=default_num_workers
    )
    dataloader_persistent_workers: bool = _training_field("dataloader_persistent_workers", True)
    dataloader_prefetch_factor: int | None = _training_field("dataloader_prefetch_factor", 4)
    # None = automatic: bf16 where the GPU supports it, TF32 on Ampere and newer.
    bf16: bool | None = _training_field("bf16", None)
    tf32: bool | None = _training_field("tf32", None)
    channels_last: bool | None = field(
        default=None,
        metadata={
            "help": "channels_last memory format for convolutional networks (default: on for conv nets on "
            "a CUDA GPU)."
        },
    )

    # Fine-tuning strategy (see hf_classifier/finetuning.py and the README's table)
    finetune_strategy: FinetuneStrategy = field(
        default="full", metadata={"help": "Which parameters train when."}
    )
    freeze_epochs: int = field(
        default=1,
        metadata={"help": "freeze_then_unfreeze / gradual_unfreeze: epochs that train the head alone."},
    )
    unfreeze_blocks_per_epoch: int | None = field(
        default=None,
        metadata={
            "help": "gradual_unfreeze: depth levels unfrozen per epoch, from the top (default: all unfrozen "
            "halfway through the remaining epochs)."
        },
    )
    layer_decay: float = field(
        default=1.0,
        metadata={
            "help": "Layer-wise learning-rate decay D: depth i trains at lr * D^(N+1-i) (0 = embeddings, "
            "N = last block). 1 = off; 0.65-0.85 is usual for ViTs."
        },
    )
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the new head (default: --learning_rate)."}
    )
    license: str | None = field(
        default=None,
        metadata={
            "help": "License named in the model card (e.g. apache-2.0, cc-by-4.0). Default: the base "
            "checkpoint's, when its card is on disk."
        },
    )
    # The label hierarchy (family -> phylum, or the coarser column --parent_column names)
    hierarchy: Hierarchy = field(
        default="none",
        metadata={
            "help": "none: one classifier. multitask: plus an auxiliary head and loss for the parent label "
            "(--parent_column, e.g. phylum) on the same backbone (the saved model is a plain classifier). "
            "experts: a parent classifier routing each image to one model per parent."
        },
    )
    parent_loss_weight: float = field(
        default=0.3, metadata={"help": "multitask: weight of the parent label's (e.g. phylum's) loss."}
    )
    phylum_loss_weight: float | None = field(
        default=None,
        metadata={"help": "The earlier name of --parent_loss_weight (it overrides it when given)."},
    )
    # Overfitting and imbalance
    class_weighting: ClassWeighting = field(
        default="none",
        metadata={
            "help": "Weight the loss by inverse class frequency (balanced) or by the "
            "effective number of samples (Cui et al. 2019)."
        },
    )
    effective_number_beta: float = field(
        default=0.999, metadata={"help": "beta of --class_weighting effective_number."}
    )
    balanced_sampler: bool = field(
        default=False,
        metadata={"help": "Draw training images so that every class is equally likely (with replacement)."},
    )
    mixup_alpha: float = field(
        default=0.0, metadata={"help": "Mixup: Beta(alpha, alpha) blending; 0 = off (0.2 is usual)."}
    )
    cutmix_alpha: float = field(
        default=0.0, metadata={"help": "CutMix: Beta(alpha, alpha) box area; 0 = off (1.0 is usual)."}
    )
    mix_probability: float = field(
        default=1.0, metadata={"help": "Share of batches mixed when mixup/cutmix is on."}
    )
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "Keep an exponential moving average of the weights (e.g. 0.999); it is evaluated "
            "and saved. 0 = off."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without a better validation macro-F1."},
    )

    def __post_init__(self) -> None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.use_cpu and not _has_accelerator():
            # Several processes on a machine without GPUs (accelerate launch / torchrun): Accelerate
            # forms a gloo process group only when told to use the CPU.
            self.use_cpu = True
        if self.phylum_loss_weight is not None:
            self.parent_loss_weight = self.phylum_loss_weight
        if self.parent_loss_weight < 0:
            raise ValueError(f"--parent_loss_weight must be >= 0, got {self.parent_loss_weight}")
        self._choose_device_defaults()
        self._check_sharded_training()  # before Trainer sets up DeepSpeed / FSDP
        super().__post_init__()
        # Trainer would drop the `image` column before our on-the-fly transform sees it.
        self.remove_unused_columns = False
        self._configure_loader_and_processes()
        for name in ("mixup_alpha", "cutmix_alpha", "ema_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        self._check_report_to()
        self._check_hub_strategy()

    def _choose_device_defaults(self) -> None:
        """Precision, batch sizes and loader settings that depend on the device (before Trainer's checks)."""
        gpu = not self.use_cpu and _cuda_available()
        if self.bf16 is None:
            self.bf16 = gpu and not self.fp16 and _cuda_bf16()
        if self.tf32 is None and gpu and _cuda_capability() >= (8, 0):
            self.tf32 = True
        device_batch = default_batch_size() if gpu else 32
        if self.per_device_train_batch_size is None:
            self.per_device_train_batch_size = device_batch
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = 2 * device_batch
        if self.dataloader_num_workers > 0:
            self._fit_batches_in_shared_memory()
        if self.dataloader_num_workers == 0:
            self.dataloader_persistent_workers = False  # both need worker processes
            self.dataloader_prefetch_factor = None

    def _fit_batches_in_shared_memory(self) -> None:
        """Loader workers hand their batches over through /dev/shm (Docker's default is 64 MB): when
        workers x prefetched batches x batch size do not fit, prefetch less, then use fewer workers, and
        say how to give the container more."""
        free = shared_memory_free()
        if free is None:
            return
        processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))  # all share this machine's /dev/shm
        batch_bytes = self.per_device_train_batch_size * BYTES_PER_IMAGE * processes
        workers, prefetch = self.dataloader_num_workers, self.dataloader_prefetch_factor or 2
        if workers * prefetch * batch_bytes <= free:
            return
        while prefetch > 1 and workers * prefetch * batch_bytes > free:
            prefetch -= 1
        while workers > 0 and workers * prefetch * batch_bytes > free:
            workers -= 1
        logger.warning(
            "/dev/shm has %d MB free, too little for %d loader workers x %d prefetched batches of %d images "
            "per process (x %d processes); using %d workers x %d batches instead. Give the container more "
            "shared memory (docker run --shm-size 8g) or pass fewer --dataloader_num_workers.",
            free // 2**20,
            self.dataloader_num_workers,
            self.dataloader_prefetch_factor or 2,
            self.per_device_train_batch_size,
            processes,
            workers,
            prefetch,
        )
        self.dataloader_num_workers = workers
        self.dataloader_prefetch_factor = prefetch if workers else None

    def _configure_loader_and_processes(self) -> None:
        """Host-device copies, per-step syncs and the DDP settings (after Trainer's own post-init)."""
        if self.dataloader_pin_memory and not _has_accelerator():
            self.dataloader_pin_memory = False  # pinning helps host-to-GPU copies only
        if self.dataloader_pin_memory:
            # Accelerate copies batches with a blocking copy unless told that they are pinned.
            self.accelerator_config.non_blocking = True
        # Trainer's NaN/inf filter reads every micro-batch's loss on the host (a sync per step); our
        # trainer keeps its own non-finite flag on the device and stops the run on it.
        self.logging_nan_inf_filter = False
        if self.ddp_find_unused_parameters is None and self.finetune_strategy != "full":
            # Frozen parameters get no gradient; DDP must expect that (they were registered trainable).
            # For `full`, training decides from the model (`modeling.parameters_without_gradient`).
            self.ddp_find_unused_parameters = True

    def _check_sharded_training(self) -> None:
        """Refuse, before any data is read, what DeepSpeed / FSDP runs cannot do here."""
        backend = sharding_backend(self)
        if backend is None:
            return
        if backend == "fsdp1":
            raise OptionError(
                "FSDP version 1 is not supported: it renames or flattens the parameters that the fine-tuning "
                "plan groups by name; set fsdp_version: 2 (configs/accelerate/fsdp.yaml) or use DDP "
                "(configs/accelerate/ddp.yaml)."
            )
        name = "DeepSpeed" if backend == "deepspeed" else "FSDP"
        if self.finetune_strategy != "full":
            raise OptionError(
                f"--finetune_strategy {self.finetune_strategy} freezes and unfreezes parameters during "
                f"training, after {name} has fixed the set it trains; use --finetune_strategy full (with --layer_decay / "
                f"--head_learning_rate) under {name}, or DDP (configs/accelerate/ddp.yaml) to freeze."
            )
        if backend == "fsdp2" and self.ema_decay > 0:
            raise OptionError(
                "--ema_decay is not supported under FSDP (the average would be of sharded weights); use DDP "
                "(configs/accelerate/ddp.yaml) or DeepSpeed ZeRO-2 (configs/accelerate/deepspeed_zero2.yaml)."
            )
        if backend == "fsdp2" and self.hierarchy == "multitask":
            raise OptionError(
                "--hierarchy multitask is not supported under FSDP (its head is checkpointed beside the sharded "
                "model); use DDP (configs/accelerate/ddp.yaml) or DeepSpeed ZeRO-2 "
                "(configs/accelerate/deepspeed_zero2.yaml)."
            )

    def _check_report_to(self) -> None:
        """Every `--report_to` integration must be installed: Trainer would fail only after the data
        were loaded and checked."""
        from transformers.integrations import integration_utils

        for name in self.report_to or []:
            if name not in REPORT_TO_PACKAGES:
                raise OptionError(
                    f"--report_to {name} is not an integration transformers knows; use one of "
                    f"{', '.join(sorted(REPORT_TO_PACKAGES))}, or none."
                )
            check, package = REPORT_TO_PACKAGES[name]
            if not getattr(integration_utils, check)():
                extra = (
                    f' (the hf-classifier[{name}] extra: pip install -e ".[{name}]" in a checkout)'
                    if name in REPORT_TO_EXTRAS
                    else ""
                )
                raise OptionError(
                    f"--report_to {name} needs the {package} package, which is not installed: pip install "
                    f"{package}{extra}, or leave {name} out of --report_to."
                )

    def _check_hub_strategy(self) -> None:
        """We push one curated upload set (model, processor, card) when training ends; pushing each
        checkpoint (transformers' every_save / checkpoint / all_checkpoints) is refused, not ignored."""
        strategy = str(getattr(self.hub_strategy, "value", self.hub_strategy))
        if strategy != "end":
            raise OptionError(
                f"--hub_strategy {strategy} is not supported: hf_classifier pushes the finished model "
                "(weights, processor, model card) once, at the end of training (--hub_strategy end, the "
                "default); pass --hub_strategy end, or push later with `hf-classifier push OUTPUT_DIR "
                "--repo_id USER/NAME`."
            )

    def for_streaming(self) -> ClassifierTrainingArguments:
        """A copy of these arguments for training on a stream (`--streaming`; this object is left as
        it is). A stream has no length: training is counted in steps, and what needs the label counts
        or the epochs up front is refused with the alternative. Epoch-based evaluation and saving
        become step-based (every tenth of the run unless --eval_steps / --save_steps say otherwise), and
        a resumed run is not replayed up to its checkpoint (that would decode every image seen so far
        again): it starts at once, in a new order drawn from the seed and the step."""
        from transformers.trainer_utils import IntervalStrategy, SaveStrategy

        from hf_classifier.data.schema import DataSourceError

        if self.max_steps is None or self.max_steps <= 0:
            raise DataSourceError("--streaming needs --max_steps: a stream has no length to count epochs in.")
        if self.finetune_strategy in ("freeze_then_unfreeze", "gradual_unfreeze"):
            raise DataSourceError(
                f"--finetune_strategy {self.finetune_strategy} counts epochs, which a stream does not have; "
                "use full or linear_probe (with --layer_decay / --head_learning_rate) with --streaming."
            )
        if self.class_weighting != "none" or self.balanced_sampler:
            raise DataSourceError(
                "--class_weighting and --balanced_sampler need the class counts up front, which a stream "
                "does not give; leave them off with --streaming."
            )
        # Not dataclasses.replace: that would run __post_init__ (its checks and warnings) again.
        stream = copy.copy(self)
        every = max(1, self.max_steps // 10)
        if self.eval_strategy == IntervalStrategy.EPOCH:
            stream.eval_strategy = IntervalStrategy.STEPS
            stream.eval_steps = self.eval_steps if self.eval_steps and self.eval_steps >= 1 else every
        if self.save_strategy == SaveStrategy.EPOCH:
            stream.save_strategy = SaveStrategy.STEPS
            stream.save_steps = stream.eval_steps if stream.eval_strategy == IntervalStrategy.STEPS else every
        if self.logging_steps > self.max_steps:
            stream.logging_steps = every
        stream.ignore_data_skip = True
        # Each process reads its own shards (Accelerate's default would read the stream on the main
        # process only and send the batches to the others).
        stream.accelerator_config = copy.copy(self.accelerator_config)
        stream.accelerator_config.dispatch_batches = False
        return stream


# --report_to name -> (transformers' availability check, the package to install)
REPORT_TO_PACKAGES = {
    "azure_ml": ("is_azureml_available", "azureml-core"),
    "clearml": ("is_clearml_available", "clearml"),
    "codecarbon": ("is_codecarbon_available", "codecarbon"),
    "comet_ml": ("is_comet_available", "comet-ml"),
    "dagshub": ("is_dagshub_available", "dagshub"),
    "dvclive": ("is_dvclive_available", "dvclive"),
    "flyte": ("is_flytekit_available", "flytekit"),
    "kubeflow": ("is_kubeflow_available", "kubeflow"),
    "mlflow": ("is_mlflow_available", "mlflow"),
    "neptune": ("is_neptune_available", "neptune"),
    "swanlab": ("is_swanlab_available", "swanlab"),
    "tensorboard": ("is_tensorboard_available", "tensorboard"),
    "trackio": ("is_trackio_available", "trackio"),
    "wandb": ("is_wandb_available", "wandb"),
}
# Integrations with an extra in pyproject.toml (`pip install "hf-classifier[wandb]"`).
REPORT_TO_EXTRAS = ("mlflow", "tensorboard", "trackio", "wandb")


@dataclass(kw_only=True)
class InferenceArguments:
    """How a trained model runs over the images: the flags predict and evaluate share, passed whole to
    the inference engine (`InferenceOptions.of`). Keyword-only, so that a command's own required
    fields (--model, ...) may follow these defaults."""

    batch_size: int = field(default=32, metadata={"help": "Images per forward pass."})
    device: Device = field(default="auto", metadata={"help": "Where to run the model."})
    num_workers: int = field(
        default_factory=default_num_workers, metadata={"help": "Image decoding workers."}
    )
    tta: Tta = field(
        default="none",
        metadata={"help": "Test-time augmentation: 'flip' averages the image and its mirror image."},
    )
    precision: Precision = field(
        default="auto",
        metadata={
            "help": "Inference precision. auto: bf16 on a GPU that supports it, fp32 elsewhere; bf16 "
            "on a CPU with AVX512-BF16/AMX is about 2x faster than fp32."
        },
    )


@dataclass
class PredictArguments(InferenceArguments):
    model: str = field(metadata={"help": "A fine-tuned model folder (OUTPUT_DIR of train) or a Hub id."})
    input: list[str] = field(
        metadata={"help": "An image folder, a CSV listing images, or image files.", "nargs": "+"}
    )
    output: str = field(default="predictions.csv", metadata={"help": "CSV to write (id, label, score, ...)."})
    image_root: str | None = field(
        default=None,
        metadata={"help": "Folder a CSV's image paths are relative to (default: the CSV's folder)."},
    )
    image_column: str | None = field(
        default=None, metadata={"help": "The CSV's image column (auto-detected)."}
    )
    id_column: str | None = field(
        default=None,
        metadata={"help": "The CSV's id column (default: rare_species_id when present, else the path)."},
    )
    top_k: int = field(default=1, metadata={"help": "Also write the next K-1 labels and their scores."})

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"--top_k must be at least 1, got {self.top_k}")


class OptionError(ValueError):
    """A command-line option (or config file) the run cannot use; the message names it."""


def config_file_to_argv(path: str | Path) -> list[str]:
    """Turn a YAML/JSON config into command-line tokens, so that flags after it override it."""
    import yaml

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text) or {}
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise OptionError(f"Config file {path} cannot be parsed: {error}") from error
    if not isinstance(values, dict):
        raise OptionError(f"{path}: expected a mapping of argument names to values at the top level")
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            argv.extend(str(item) for item in value)
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def expand_config_file(argv: list[str]) -> list[str]:
    """`train config.yaml --learning_rate 1e-4` or `train --config config.yaml --learning_rate 1e-4`
    -> the config's flags followed by the other flags, which therefore override it."""
    argv = list(argv)
    config: str | None = None
    if argv and argv[0].endswith(CONFIG_FILE_SUFFIXES) and not argv[0].startswith("-"):
        config = argv.pop(0)
    for index, token in enumerate(argv):
        if token == "--config" or token.startswith("--config="):
            if config is not None:
                raise OptionError("Give one config file (positional or --config FILE), not two.")
            if token == "--config":
                if index + 1 >= len(argv) or argv[index + 1].startswith("-"):
                    raise OptionError("--config needs a file: --config configs/vit.yaml")
                config = argv[index + 1]
                del argv[index : index + 2]
            else:
                config = token.partition("=")[2]
                del argv[index]
            break
    if config is None:
        return argv
    if not Path(config).is_file():
        raise OptionError(f"Config file {config} does not exist")
    return config_file_to_argv(config) + argv


def given_flags(argv: list[str]) -> set[str]:
    """The argument names set explicitly on the command line or in the config file (`--no_x` sets x)."""
    names = set()
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name = token[2:].partition("=")[0].replace("-", "_")
            names.add(name)
            if name.startswith("no_"):
                names.add(name[3:])
    return names


def _strategy(value: Any) -> str:
    return str(getattr(value, "value", value))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def couple_evaluation_to_saving(parser: HfArgumentParser, argv: list[str]) -> list[str]:
    """With `--load_best_model_at_end` (our default) every checkpoint needs an evaluation. When the
    user sets only the saving schedule, evaluation follows it (and the other way round), and the log
    says so; when both are set and clash, the error names the flags to change. Returns `argv` with
    the following flags appended."""
    namespace, _ = parser.parse_known_args(argv)
    if not getattr(namespace, "load_best_model_at_end", False):
        return argv
    given = given_flags(argv)
    save, evaluate = _strategy(namespace.save_strategy), _strategy(namespace.eval_strategy)
    save_steps, eval_steps = namespace.save_steps, namespace.eval_steps or namespace.logging_steps
    if save == "best":
        return argv
    added: list[str] = []
    if save != evaluate:
        save_given, eval_given = "save_strategy" in given, "eval_strategy" in given
        if "no" in (save, evaluate) and "load_best_model_at_end" not in given:
            # Nothing to choose the best from: the final model is the last one.
            logger.info(
                "--%s no: the model at the end of training is kept (--load_best_model_at_end off).",
                "save_strategy" if save == "no" else "eval_strategy",
            )
            return [*argv, "--load_best_model_at_end", "false"]
        if save_given == eval_given or "no" in (save, evaluate):
            raise OptionError(
                f"--save_strategy {save} and --eval_strategy {evaluate} clash: --load_best_model_at_end "
                "(on by default) chooses among the saved checkpoints by their evaluation, so both must "
                "follow the same schedule. Give --eval_strategy the value of --save_strategy (with "
                "--eval_steps dividing --save_steps), or pass --load_best_model_at_end false."
            )
        if save_given:
            evaluate = save
            added += ["--eval_strategy", save]
            if save == "steps" and "eval_steps" not in given:
                eval_steps = save_steps
                added += ["--eval_steps", _number(save_steps)]
        else:
            save = evaluate
            added += ["--save_strategy", evaluate]
            if evaluate == "steps" and "save_steps" not in given:
                save_steps = eval_steps
                added += ["--save_steps", _number(eval_steps)]
    if save == evaluate == "steps" and save_steps >= 1 and eval_steps >= 1 and save_steps % eval_steps:
        if "eval_steps" not in given:
            added += ["--eval_steps", _number(save_steps)]
        elif "save_steps" not in given:
            added += ["--save_steps", _number(eval_steps)]
        else:
            raise OptionError(
                f"--save_steps {_number(save_steps)} is not a multiple of --eval_steps {_number(eval_steps)}: "
                "--load_best_model_at_end (on by default) needs an evaluation at every save. Change "
                "--save_steps or --eval_steps, or pass --load_best_model_at_end false."
            )
    if added:
        logger.info(
            "%s, to match the flags given: --load_best_model_at_end (on by default) needs an evaluation "
            "at every save (pass both flags, or --load_best_model_at_end false, to choose otherwise).",
            " ".join(added),
        )
    return [*argv, *added]


# Flags naming a folder we write into, and flags naming a file we write.
OUTPUT_FOLDER_FLAGS = ("output_dir", "cache_dir", "prepared_cache_dir", "dry_run")
OUTPUT_FILE_FLAGS = ("output",)


def check_output_paths(parsed: tuple[Any, ...]) -> None:
    """Refuse output paths that cannot be written (a file where a folder is needed, or the other way
    round) before anything is read or trained."""
    for values in parsed:
        for name in OUTPUT_FOLDER_FLAGS + OUTPUT_FILE_FLAGS:
            value = getattr(values, name, None)
            if not isinstance(value, str) or not value:
                continue
            path = Path(value)
            if name in OUTPUT_FILE_FLAGS and path.is_dir():
                raise OptionError(f"--{name} {value} is a folder; pass a file name (e.g. {path / 'out'}).")
            if name in OUTPUT_FOLDER_FLAGS and path.exists() and not path.is_dir():
                raise OptionError(
                    f"--{name} {value} is a file, not a folder; pass a folder (it is created if missing)."
                )
            blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
            if blocking is not None:
                raise OptionError(f"--{name} {value}: {blocking} is a file, not a folder; pick another path.")


class _OneLineErrorParser(HfArgumentParser):
    """argparse prints the whole usage (hundreds of lines for train) before its message: raise the
    message instead, so the CLI prints it on one line (`--help` still shows the usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise OptionError(f"{message} (see --help)")


def parse_args(
    dataclass_types: tuple[type, ...], argv: list[str], prog: str | None = None
) -> tuple[Any, ...]:
    """Parse flags (and a config file, positional or `--config FILE`) into the dataclasses; every
    problem is an `OptionError` naming the flag."""
    # No abbreviations: `--model` must not silently mean --model_name_or_path (and the flags the user
    # gave are then exactly the names written).
    parser = _OneLineErrorParser(dataclass_types, prog=prog, allow_abbrev=False)
    try:
        argv = expand_config_file(list(argv))
        if any(issubclass(kind, TrainingArguments) for kind in dataclass_types):
            argv = couple_evaluation_to_saving(parser, argv)
        parsed = streamed_training(parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False))
    except OptionError:
        raise
    except ValueError as error:  # the dataclasses' checks (ours and TrainingArguments'): bad options
        raise OptionError(str(error)) from error
    check_output_paths(parsed)
    return parsed


def streamed_training(parsed: tuple[Any, ...]) -> tuple[Any, ...]:
    """Training arguments parsed beside a streamed data source (`--streaming`) are those for a stream:
    counted in steps (`ClassifierTrainingArguments.for_streaming`)."""
    if not any(isinstance(p, DataArguments) and p.streaming for p in parsed):
        return parsed
    return tuple(p.for_streaming() if isinstance(p, ClassifierTrainingArguments) else p for p in parsed)


def field_names(dataclass_type: type) -> set[str]:
    return {f.name for f in fields(dataclass_type)}


@dataclass(kw_only=True)
class ImageScanArguments:
    """How every image is read once and compared: the flags inspect and split share (keyword-only, so
    that a command's own required fields may follow these defaults)."""

    near_duplicate_threshold: int = field(
        default=8, metadata={"help": "Perceptual-hash bits (of 64) within which two images count as copies."}
    )
    num_workers: int | None = field(default=None, metadata={"help": "Parallel readers (default: all CPUs)."})


@dataclass
class InspectArguments(ImageScanArguments):
    output_dir: str = field(metadata={"help": "Where report.json, the plots and the contact sheets go."})
    tiny_size: int = field(
        default=64, metadata={"help": "Images with a shorter side below this are listed as tiny."}
    )
    min_images_per_class: int = field(
        default=10, metadata={"help": "Classes with fewer images are listed as too small to learn."}
    )
    samples_per_class: int = field(default=6, metadata={"help": "Pictures per class on the contact sheets."})
    seed: int = field(default=0, metadata={"help": "Seed for the contact sheet samples."})


@dataclass
class SplitArguments(ImageScanArguments):
    output_dir: str = field(metadata={"help": "Where train.csv, validation.csv and test.csv go."})
    val_size: float = field(default=0.1, metadata={"help": "Share of each class for validation."})
    test_size: float = field(default=0.1, metadata={"help": "Share of each class for the final test."})
    seed: int = field(default=42, metadata={"help": "Same seed, same split."})

    def __post_init__(self) -> None:
        from hf_classifier.data.splits import check_split_sizes

        check_split_sizes(self.val_size, self.test_size)  # before any data is loaded


@dataclass
class AugmentPreviewArguments:
    augmentation: Augmentation = field(default="medium", metadata={"help": "The preset to look at."})
    output: str = field(default="augment_preview.png", metadata={"help": "The PNG to write."})
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Checkpoint whose input size and crop to use (default: a square --image_size)."},
    )
    image_size: int = field(default=224, metadata={"help": "Input size when no checkpoint is given."})
    num_images: int = field(default=6, metadata={"help": "Training images shown (spread over the classes)."})
    num_versions: int = field(default=5, metadata={"help": "Augmented versions of each."})
    seed: int = field(default=0, metadata={"help": "Same seed, same pictures."})


@dataclass
class EvaluateArguments(InferenceArguments):
    model: str = field(
        metadata={"help": "A trained model folder (OUTPUT_DIR of train, experts included) or Hub id."}
    )
    output_dir: str = field(metadata={"help": "Where metrics.json, the reports and the pictures go."})
    batch_size: int = redeclared(InferenceArguments, "batch_size", default=64, kw_only=True)
    max_misclassified: int = field(
        default=48, metadata={"help": "Wrong predictions shown in misclassified.png."}
    )


@dataclass
class CompareArguments:
    strategies: str = field(
        default="flat,multitask,experts",
        metadata={"help": "Comma-separated: flat (no hierarchy), multitask, experts."},
    )

    def __post_init__(self) -> None:
        unknown = [name for name in self.strategy_names if name not in STRATEGY_HIERARCHY]
        if unknown or not self.strategy_names:
            raise ValueError(
                f"--strategies {self.strategies!r}: choose one or more of {', '.join(STRATEGY_HIERARCHY)}, "
                "comma-separated."
            )

    @property
    def strategy_names(self) -> list[str]:
        return [name.strip() for name in self.strategies.split(",") if name.strip()]


@dataclass
class PushArguments:
    model_dir: str = field(metadata={"help": "The trained model folder (OUTPUT_DIR of train)."})
    repo_id: str = field(metadata={"help": "USER/NAME or ORG/NAME on the Hub."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to push to (created if missing)."})
    commit_message: str | None = field(default=None, metadata={"help": "The commit message."})
    dry_run: str | None = field(
        default=None,
        metadata={"help": "Write exactly the upload set into this folder and list it; send nothing."},
    )
    token: str | None = field(
        default=None,
        metadata={"help": "Hub token (default: HF_TOKEN or the saved login). Never written anywhere."},
    )


@dataclass
class PrepareArguments:
    image_size: int = field(
        default=224, metadata={"help": "The training size; images are stored at a margin above it."}
    )
    cache_dir: str | None = redeclared(DataArguments, "prepared_cache_dir", default=None)
    num_proc: int | None = field(default=None, metadata={"help": "Processes (default: all CPUs)."})
    skip_bad_images: bool = field(
        default=True, metadata={"help": "Record unreadable images instead of stopping."}
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where bad_images.csv goes (default: the cache)."}
    )

    def __post_init__(self) -> None:
        from hf_classifier.data.prepared import default_cache_dir

        self.cache_dir = self.cache_dir or str(default_cache_dir())
        self.output_dir = self.output_dir or self.cache_dir
