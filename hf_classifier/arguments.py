"""Command-line arguments as dataclasses, parsed by `HfArgumentParser` from flags or a YAML/JSON file.

`train` takes `DataArguments`, `ModelArguments` and `ClassifierTrainingArguments` (every
`TrainingArguments` flag, with defaults suited to image classification).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from transformers import HfArgumentParser, TrainingArguments

from .images import available_cpus
from .sources import ImageData, load_image_data

CONFIG_FILE_SUFFIXES = (".yaml", ".yml", ".json")


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
    split_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder with train.csv / validation.csv / test.csv written earlier (e.g. OUTPUT_DIR/splits)."
        },
    )

    def load_data(self, cache_dir: str | None = None, token: str | None = None) -> ImageData:
        return load_image_data(
            data_dir=self.data_dir,
            metadata_csv=self.metadata_csv,
            dataset_name=self.dataset_name,
            dataset_config_name=self.dataset_config_name,
            image_root=self.image_root,
            image_column=self.image_column,
            label_column=self.label_column,
            split_dir=self.split_dir,
            cache_dir=cache_dir,
            token=token,
        )


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
    augmentation: Literal["none", "light", "medium", "strong"] = field(
        default="light", metadata={"help": "Training augmentation preset."}
    )
    prepare: bool = field(
        default=False,
        metadata={
            "help": "Decode every photo once into a pre-resized Arrow copy (cached, reused by later epochs "
            "and runs): much faster epochs on full-size photos."
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
        if self.streaming and (self.prepare or self.split_dir or self.metadata_csv):
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


def _training_field(name: str, default: Any) -> Any:
    """Re-declare a `TrainingArguments` field with our default, keeping its help text."""
    return field(default=default, metadata=TrainingArguments.__dataclass_fields__[name].metadata)


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


def default_num_workers() -> int:
    """The CPUs available, shared among the training processes on this machine (torchrun and
    accelerate set LOCAL_WORLD_SIZE): 8 processes on 64 cores get 8 workers each, not 64."""
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    return max(1, available_cpus() // local_processes)


@dataclass
class ClassifierTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults for fine-tuning an image classifier."""

    output_dir: str = field(
        metadata={"help": "Where the model, metrics, splits and checkpoints are written."}
    )
    num_train_epochs: float = _training_field("num_train_epochs", 5.0)
    learning_rate: float = _training_field("learning_rate", 5e-5)
    per_device_train_batch_size: int = _training_field("per_device_train_batch_size", 32)
    per_device_eval_batch_size: int = _training_field("per_device_eval_batch_size", 64)
    lr_scheduler_type: str = _training_field("lr_scheduler_type", "cosine")
    warmup_steps: float = _training_field("warmup_steps", 0.1)
    weight_decay: float = _training_field("weight_decay", 0.05)
    eval_strategy: str = _training_field("eval_strategy", "epoch")
    save_strategy: str = _training_field("save_strategy", "epoch")
    logging_steps: float = _training_field("logging_steps", 20)
    save_total_limit: int | None = _training_field("save_total_limit", 2)
    load_best_model_at_end: bool = _training_field("load_best_model_at_end", True)
    metric_for_best_model: str | None = _training_field("metric_for_best_model", "f1_macro")
    greater_is_better: bool | None = _training_field("greater_is_better", True)
    # The image column must survive until our transform turns it into pixel_values.
    remove_unused_columns: bool = _training_field("remove_unused_columns", False)
    dataloader_num_workers: int = field(
        default_factory=default_num_workers,
        metadata=TrainingArguments.__dataclass_fields__["dataloader_num_workers"].metadata,
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
    finetune_strategy: Literal["full", "linear_probe", "freeze_then_unfreeze", "gradual_unfreeze"] = field(
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
    # The label hierarchy (family -> phylum, from a phylum column or phylum_family folders)
    hierarchy: Literal["none", "multitask", "experts"] = field(
        default="none",
        metadata={
            "help": "none: one family classifier. multitask: plus an auxiliary phylum head and loss on the "
            "same backbone (the saved model is a plain family classifier). experts: a phylum "
            "classifier routing each image to one family model per phylum."
        },
    )
    phylum_loss_weight: float = field(default=0.3, metadata={"help": "multitask: weight of the phylum loss."})
    # Overfitting and imbalance
    class_weighting: Literal["none", "balanced", "effective_number"] = field(
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
        gpu = not self.use_cpu and _cuda_available()
        if self.bf16 is None:
            self.bf16 = gpu and not self.fp16 and _cuda_bf16()
        if self.tf32 is None and gpu and _cuda_capability() >= (8, 0):
            self.tf32 = True
        if self.dataloader_num_workers == 0:
            self.dataloader_persistent_workers = False  # both need worker processes
            self.dataloader_prefetch_factor = None
        super().__post_init__()
        # Trainer would drop the `image` column before our on-the-fly transform sees it.
        self.remove_unused_columns = False
        if self.dataloader_pin_memory and not _has_accelerator():
            self.dataloader_pin_memory = False  # pinning helps host-to-GPU copies only
        if self.ddp_find_unused_parameters is None:
            # Frozen parameters get no gradient; DDP must expect that (they were registered trainable).
            # Otherwise every parameter is used, and the extra graph traversal per step is waste
            # (Trainer's own default turns it on for every model).
            self.ddp_find_unused_parameters = self.finetune_strategy != "full"
        for name in ("mixup_alpha", "cutmix_alpha", "ema_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class PredictArguments:
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
    batch_size: int = field(default=32, metadata={"help": "Images per forward pass."})
    device: Literal["auto", "cpu", "cuda", "mps"] = field(
        default="auto", metadata={"help": "Where to run the model."}
    )
    num_workers: int = field(
        default_factory=default_num_workers, metadata={"help": "Image decoding workers."}
    )
    tta: Literal["none", "flip"] = field(
        default="none",
        metadata={"help": "Test-time augmentation: 'flip' averages the image and its mirror image."},
    )
    precision: Literal["auto", "fp32", "bf16"] = field(
        default="auto",
        metadata={
            "help": "Inference precision. auto: bf16 on a GPU that supports it, fp32 elsewhere; bf16 "
            "on a CPU with AVX512-BF16/AMX is about 2x faster than fp32."
        },
    )

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
    """`train config.yaml --learning_rate 1e-4` -> the config's flags followed by the overrides."""
    if argv and argv[0].endswith(CONFIG_FILE_SUFFIXES) and not argv[0].startswith("-"):
        if not Path(argv[0]).is_file():
            raise OptionError(f"Config file {argv[0]} does not exist")
        return config_file_to_argv(argv[0]) + argv[1:]
    return argv


def parse_args(
    dataclass_types: tuple[type, ...], argv: list[str], prog: str | None = None
) -> tuple[Any, ...]:
    parser = HfArgumentParser(dataclass_types, prog=prog)
    try:
        return parser.parse_args_into_dataclasses(
            args=expand_config_file(list(argv)), look_for_args_file=False
        )
    except OptionError:
        raise
    except ValueError as error:  # the dataclasses' checks (ours and TrainingArguments'): bad options
        raise OptionError(str(error)) from error


def field_names(dataclass_type: type) -> set[str]:
    return {f.name for f in fields(dataclass_type)}


@dataclass
class InspectArguments:
    output_dir: str = field(metadata={"help": "Where report.json, the plots and the contact sheets go."})
    tiny_size: int = field(
        default=64, metadata={"help": "Images with a shorter side below this are listed as tiny."}
    )
    min_images_per_class: int = field(
        default=10, metadata={"help": "Classes with fewer images are listed as too small to learn."}
    )
    near_duplicate_threshold: int = field(
        default=8, metadata={"help": "Perceptual-hash bits (of 64) within which two images count as copies."}
    )
    samples_per_class: int = field(default=6, metadata={"help": "Pictures per class on the contact sheets."})
    num_workers: int | None = field(default=None, metadata={"help": "Parallel readers (default: all CPUs)."})
    seed: int = field(default=0, metadata={"help": "Seed for the contact sheet samples."})


@dataclass
class SplitArguments:
    output_dir: str = field(metadata={"help": "Where train.csv, validation.csv and test.csv go."})
    val_size: float = field(default=0.1, metadata={"help": "Share of each class for validation."})
    test_size: float = field(default=0.1, metadata={"help": "Share of each class for the final test."})
    seed: int = field(default=42, metadata={"help": "Same seed, same split."})
    near_duplicate_threshold: int = field(
        default=8, metadata={"help": "Perceptual-hash bits (of 64) within which two images count as copies."}
    )
    num_workers: int | None = field(default=None, metadata={"help": "Parallel readers (default: all CPUs)."})

    def __post_init__(self) -> None:
        from .splits import check_split_sizes

        check_split_sizes(self.val_size, self.test_size)  # before any data is loaded


@dataclass
class AugmentPreviewArguments:
    augmentation: Literal["none", "light", "medium", "strong"] = field(
        default="medium", metadata={"help": "The preset to look at."}
    )
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
class EvaluateArguments:
    model: str = field(
        metadata={"help": "A trained model folder (OUTPUT_DIR of train, experts included) or Hub id."}
    )
    output_dir: str = field(metadata={"help": "Where metrics.json, the reports and the pictures go."})
    tta: Literal["none", "flip"] = field(
        default="none",
        metadata={"help": "Test-time augmentation: 'flip' averages the image and its mirror image."},
    )
    precision: Literal["auto", "fp32", "bf16"] = field(
        default="auto",
        metadata={
            "help": "Inference precision. auto: bf16 on a GPU that supports it, fp32 elsewhere; bf16 "
            "on a CPU with AVX512-BF16/AMX is about 2x faster than fp32."
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})
    device: Literal["auto", "cpu", "cuda", "mps"] = field(
        default="auto", metadata={"help": "Where to run the model."}
    )
    num_workers: int = field(
        default_factory=default_num_workers, metadata={"help": "Image decoding workers."}
    )
    max_misclassified: int = field(
        default=48, metadata={"help": "Wrong predictions shown in misclassified.png."}
    )


@dataclass
class CompareArguments:
    strategies: str = field(
        default="flat,multitask,experts",
        metadata={"help": "Comma-separated: flat (no hierarchy), multitask, experts."},
    )


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
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where prepared copies are kept (default: ~/.cache/hf_classifier/prepared)."},
    )
    num_proc: int | None = field(default=None, metadata={"help": "Processes (default: all CPUs)."})
    skip_bad_images: bool = field(
        default=True, metadata={"help": "Record unreadable images instead of stopping."}
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where bad_images.csv goes (default: the cache)."}
    )
