"""`hf-classifier COMMAND ...`: each command parses its argument dataclasses, hands them to the
library and returns the line to print."""

from __future__ import annotations

import dataclasses
import errno
import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hf_classifier import __version__

if TYPE_CHECKING:
    from hf_classifier.cli.arguments import (
        AugmentPreviewArguments,
        ClassifierTrainingArguments,
        CompareArguments,
        DataArguments,
        DataSourceArguments,
        EvaluateArguments,
        InspectArguments,
        ModelArguments,
        PredictArguments,
        PrepareArguments,
        PushArguments,
        SplitArguments,
    )
    from hf_classifier.quickstart.run import QuickstartArguments

logger = logging.getLogger("hf_classifier")


@dataclasses.dataclass(frozen=True)
class Command:
    """`hf-classifier NAME ARGS`, NAME from `run`'s name (`augment_preview_command`: augment-preview):
    ARGS parsed into the `arguments` dataclasses (named in cli/arguments.py, or as package.module.Name),
    `run` called with them, and the line it returns printed by the main process. The dataclasses are
    imported when the command runs, so that `hf-classifier --help` answers at once."""

    run: Callable[..., str | None]
    arguments: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.run.__name__.removesuffix("_command").replace("_", "-")

    def __call__(self, argv: list[str]) -> int:
        from hf_classifier.cli.arguments import parse_args
        from hf_classifier.training.distributed import is_main_process

        message = self.run(*parse_args(self.argument_types(), argv, prog=f"hf-classifier {self.name}"))
        if message is not None and is_main_process():
            print(message)
        return 0

    def argument_types(self) -> tuple[type, ...]:
        types = []
        for name in self.arguments:
            module, _, class_name = name.rpartition(".")
            types.append(
                getattr(importlib.import_module(module or "hf_classifier.cli.arguments"), class_name)
            )
        return tuple(types)


TRAINING_ARGUMENTS = ("DataArguments", "ModelArguments", "ClassifierTrainingArguments")


def train_command(
    data_args: DataArguments, model_args: ModelArguments, training_args: ClassifierTrainingArguments
) -> str | None:
    from hf_classifier.hierarchy.experts import train_model

    if not training_args.should_log:
        logger.setLevel(logging.WARNING)
    outcome = train_model(data_args, model_args, training_args)
    if not training_args.should_save:
        return None
    metrics = outcome.metrics
    return (
        f"\nModel written to {outcome.output_dir}: validation macro-F1 "
        f"{metrics.get('eval_f1_macro', float('nan')):.4f}, accuracy {metrics.get('eval_accuracy', float('nan')):.4f}"
    )


def predict_command(args: PredictArguments) -> str:
    from hf_classifier.cli.arguments import keywords_for
    from hf_classifier.evaluation.inference import InferenceOptions
    from hf_classifier.evaluation.predictions import predict

    options = InferenceOptions.of(args, distributed=True)
    result = predict(args.model, args.input, args.output, options, **keywords_for(predict, args))
    errors = f", {result.errors} unreadable (see the 'error' column)" if result.errors else ""
    return f"Wrote {result.rows} predictions ({result.label_name}) to {result.output}{errors}"


def push_command(args: PushArguments) -> str:
    from hf_classifier.cli.arguments import keywords_for
    from hf_classifier.hub.publish import collect_upload_set, push_model_folder

    files = collect_upload_set(args.model_dir)
    where = push_model_folder(args.model_dir, **keywords_for(push_model_folder, args))
    listing = "\n".join(f"  {name}" for name in files)
    if args.dry_run:
        return f"Dry run: the upload set ({len(files)} files) is in {where}; nothing was sent.\n{listing}"
    return f"Pushed {len(files)} files to https://huggingface.co/{args.repo_id} ({where})\n{listing}"


class PushCommand(Command):
    """`push DIR --repo_id ...`: the folder may come first, without a flag (a config file may too)."""

    def __call__(self, argv: list[str]) -> int:
        from hf_classifier.cli.arguments import CONFIG_FILE_SUFFIXES

        if argv and not argv[0].startswith("-") and not argv[0].endswith(CONFIG_FILE_SUFFIXES):
            argv = ["--model_dir", argv[0], *argv[1:]]
        return super().__call__(argv)


def quickstart_command(args: QuickstartArguments) -> str:
    from hf_classifier.quickstart.run import run_quickstart, summary

    return summary(run_quickstart(args))


def inspect_command(source: DataSourceArguments, args: InspectArguments) -> str:
    from hf_classifier.cli.arguments import keywords_for
    from hf_classifier.data.inspection import inspect, summary

    options = keywords_for(inspect, source, args, near_threshold=args.near_duplicate_threshold)
    report = inspect(source.load_data(), args.output_dir, **options)
    return summary(report, Path(args.output_dir))


def split_command(source: DataSourceArguments, args: SplitArguments) -> str:
    from hf_classifier.cli.arguments import keywords_for
    from hf_classifier.data.splits import split_without_leaks

    options = keywords_for(split_without_leaks, args, near_threshold=args.near_duplicate_threshold)
    report = split_without_leaks(source.load_data(), args.output_dir, **options)
    sizes = ", ".join(f"{name} {size}" for name, size in report["sizes"].items())
    return (
        f"Wrote {sizes} to {args.output_dir} ({report['duplicate_groups_kept_together']} duplicate groups kept "
        f"in one split). Train on it with: hf-classifier train --split_dir {args.output_dir} ..."
    )


def evaluate_command(source: DataSourceArguments, args: EvaluateArguments) -> str | None:
    from hf_classifier.cli.arguments import keywords_for
    from hf_classifier.data.schema import DataSourceError
    from hf_classifier.evaluation.inference import InferenceOptions, load_predictor
    from hf_classifier.evaluation.reports import evaluate_model

    data = None
    if source.label_column is None:
        # The model knows which column it learned (e.g. family): use it when the data has that column.
        label_name = load_predictor(args.model).label_name
        if label_name != "label":
            try:
                data = dataclasses.replace(source, label_column=label_name).load_data()
            except DataSourceError:
                pass
    options = InferenceOptions.of(args, progress=True, distributed=True)
    data = data or source.load_data()
    report = evaluate_model(
        args.model, data, args.output_dir, options, **keywords_for(evaluate_model, source, args)
    )
    if not report:  # a process other than the main one
        return None
    column = report.get("parent_column")
    parent = f", {column} macro-F1 {report[column]['f1_macro']:.4f}" if column else ""
    return (
        f"{report['num_images']} images: accuracy {report['accuracy']:.4f}, macro-F1 {report['f1_macro']:.4f}"
        f"{parent}. Reports and pictures in {args.output_dir} (summary.md, metrics.json)."
    )


def compare_command(
    data_args: DataArguments,
    model_args: ModelArguments,
    training_args: ClassifierTrainingArguments,
    args: CompareArguments,
) -> str:
    from hf_classifier.hierarchy.compare import compare

    return compare(data_args, model_args, training_args, args.strategy_names)


def prepare_command(source: DataSourceArguments, args: PrepareArguments) -> str:
    from hf_classifier.data.checks import handle_bad_rows
    from hf_classifier.data.prepared import prepare_data, prepared_size

    size = prepared_size(args.image_size)
    data, bad = prepare_data(source.load_data(), size, cache_dir=args.cache_dir, num_proc=args.num_proc)
    data = handle_bad_rows(data, bad, skip=args.skip_bad_images, report_dir=args.output_dir)
    total = sum(len(split) for split in data.splits.values())
    return (
        f"Prepared {total} images (shorter side {size} px) in {args.cache_dir}"
        + (f"; {len(bad)} unreadable, listed in bad_images.csv" if bad else "")
        + ". Runs with the same data and --prepare reuse them."
    )


def augment_preview_command(source: DataSourceArguments, args: AugmentPreviewArguments) -> str:
    from hf_classifier.cli.arguments import keywords_for
    from hf_classifier.io_utils import write_png
    from hf_classifier.models.build import load_image_processor
    from hf_classifier.transforms.preview import augmentation_preview

    processor = load_image_processor(args.model_name_or_path) if args.model_name_or_path else None
    options = keywords_for(augmentation_preview, args, processor=processor)
    grid = augmentation_preview(source.load_data(), args.augmentation, **options)
    write_png(args.output, grid)
    return f"Wrote {args.output}"


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    command.name: (command, help)
    for command, help in (
        (
            Command(train_command, TRAINING_ARGUMENTS),
            "fine-tune a checkpoint on an image folder, a metadata CSV or a data set",
        ),
        (
            Command(predict_command, ("PredictArguments",)),
            "classify images: a folder, a CSV or files in, a CSV of id and label out",
        ),
        (
            Command(inspect_command, ("DataSourceArguments", "InspectArguments")),
            "look at the data: counts, sizes, modes, unreadable files, duplicates, plots",
        ),
        (
            Command(prepare_command, ("DataSourceArguments", "PrepareArguments")),
            "decode every photo once into a pre-resized, cached Arrow copy (fast epochs)",
        ),
        (
            Command(split_command, ("DataSourceArguments", "SplitArguments")),
            "write leak-free stratified train / validation / test CSVs",
        ),
        (
            Command(evaluate_command, ("DataSourceArguments", "EvaluateArguments")),
            "metrics, confusion matrix, misclassified images and summary for a model",
        ),
        (
            PushCommand(push_command, ("PushArguments",)),
            "upload a trained model (weights, config, processor, card) to the Hub",
        ),
        (
            Command(compare_command, (*TRAINING_ARGUMENTS, "CompareArguments")),
            "train flat, multitask and experts on the same splits and compare them",
        ),
        (
            Command(augment_preview_command, ("DataSourceArguments", "AugmentPreviewArguments")),
            "show originals beside augmented versions",
        ),
        (
            Command(quickstart_command, ("hf_classifier.quickstart.run.QuickstartArguments",)),
            "run the whole pipeline on a small embedded data set (no download)",
        ),
    )
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    return (
        f"usage: hf-classifier COMMAND [ARGS]   (hf_classifier {__version__})\n\ncommands:\n{rows}\n\n"
        "Run `hf-classifier COMMAND --help` for a command's arguments."
    )


def setup_logging() -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.WARNING
    )
    logger.setLevel(logging.INFO)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()
    # Without torchvision transformers uses its PIL image processors, which is what our transforms mirror.
    transformers.utils.logging.get_logger("transformers.utils.import_utils").addFilter(
        lambda record: "requires torchvision (not installed)" not in record.getMessage()
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    if argv[0] not in COMMANDS:
        print(f"hf-classifier: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    setup_logging()
    command, _ = COMMANDS[argv[0]]
    try:
        return command(argv[1:])
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - user-facing errors get a message, not a traceback
        if not is_user_error(error):
            raise
        print(f"hf-classifier {argv[0]}: error: {user_error_message(error)}", file=sys.stderr)
        return 1


def user_error_message(error: BaseException) -> str:
    """The one-line message for a user error: a full disk or a denied permission names the path."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {error.filename}" if error.filename else ""
        return (
            f"no space left on the disk{where}. Free some space, or write to another disk "
            "(--output_dir, --cache_dir / --prepared_cache_dir for prepared images), then run the same "
            "command again: finished work is kept and reused."
        )
    if isinstance(error, PermissionError):
        return f"permission denied: {error.filename or error}. Choose a path you can write to or read."
    return str(error)


def is_user_error(error: BaseException) -> bool:
    """Errors caused by the input (data, files, options, network, a full disk) rather than by a bug."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES):
        return True
    from hf_classifier.cli.arguments import OptionError
    from hf_classifier.data.checks import BadImagesError
    from hf_classifier.data.images import BadImageError
    from hf_classifier.data.schema import DataSourceError
    from hf_classifier.hub.offline import HubUnavailableError
    from hf_classifier.hub.publish import PublishError

    return isinstance(
        error,
        (
            OptionError,
            DataSourceError,
            BadImagesError,
            BadImageError,
            HubUnavailableError,
            PublishError,
            FileNotFoundError,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
