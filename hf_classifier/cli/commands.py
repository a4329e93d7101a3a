"""`hf-classifier COMMAND ...`: thin wrappers that parse arguments and call the library."""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Callable

from hf_classifier import __version__

logger = logging.getLogger("hf_classifier")


def train_command(argv: list[str]) -> int:
    from hf_classifier.cli.arguments import (
        ClassifierTrainingArguments,
        DataArguments,
        ModelArguments,
        parse_args,
    )
    from hf_classifier.training.run import train

    data_args, model_args, training_args = parse_args(
        (DataArguments, ModelArguments, ClassifierTrainingArguments), argv, prog="hf-classifier train"
    )
    if not training_args.should_log:
        logger.setLevel(logging.WARNING)
    outcome = train(data_args, model_args, training_args)
    if training_args.should_save:
        metrics = outcome.metrics
        print(
            f"\nModel written to {outcome.output_dir}: validation macro-F1 "
            f"{metrics.get('eval_f1_macro', float('nan')):.4f}, accuracy {metrics.get('eval_accuracy', float('nan')):.4f}"
        )
    return 0


def predict_command(argv: list[str]) -> int:
    from hf_classifier.cli.arguments import PredictArguments, parse_args
    from hf_classifier.evaluation.predictions import predict
    from hf_classifier.training.distributed import is_main_process

    (args,) = parse_args((PredictArguments,), argv, prog="hf-classifier predict")
    result = predict(
        args.model,
        args.input,
        args.output,
        image_root=args.image_root,
        image_column=args.image_column,
        id_column=args.id_column,
        top_k=args.top_k,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.num_workers,
        tta=args.tta,
        precision=args.precision,
        distributed=True,
    )
    if not is_main_process():
        return 0
    errors = f", {result.errors} unreadable (see the 'error' column)" if result.errors else ""
    print(f"Wrote {result.rows} predictions ({result.label_name}) to {result.output}{errors}")
    return 0


def push_command(argv: list[str]) -> int:
    from hf_classifier.cli.arguments import CONFIG_FILE_SUFFIXES, PushArguments, parse_args
    from hf_classifier.hub.publish import collect_upload_set, push_model_folder

    # `push DIR --repo_id ...`: the folder may come first, without a flag (a config file may too).
    if argv and not argv[0].startswith("-") and not argv[0].endswith(CONFIG_FILE_SUFFIXES):
        argv = ["--model_dir", argv[0], *argv[1:]]
    (args,) = parse_args((PushArguments,), argv, prog="hf-classifier push")
    files = collect_upload_set(args.model_dir)
    where = push_model_folder(
        args.model_dir,
        repo_id=args.repo_id,
        token=args.token,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        dry_run=args.dry_run,
    )
    listing = "\n".join(f"  {name}" for name in files)
    if args.dry_run:
        print(f"Dry run: the upload set ({len(files)} files) is in {where}; nothing was sent.\n{listing}")
    else:
        print(f"Pushed {len(files)} files to https://huggingface.co/{args.repo_id} ({where})\n{listing}")
    return 0


def quickstart_command(argv: list[str]) -> int:
    from hf_classifier.cli.arguments import parse_args
    from hf_classifier.quickstart.run import QuickstartArguments, run_quickstart, summary

    (args,) = parse_args((QuickstartArguments,), argv, prog="hf-classifier quickstart")
    print(summary(run_quickstart(args)))
    return 0


def inspect_command(argv: list[str]) -> int:
    from pathlib import Path

    from hf_classifier.cli.arguments import DataSourceArguments, InspectArguments, parse_args
    from hf_classifier.data.inspection import inspect, summary

    source, args = parse_args((DataSourceArguments, InspectArguments), argv, prog="hf-classifier inspect")
    report = inspect(
        source.load_data(),
        args.output_dir,
        tiny_size=args.tiny_size,
        min_images_per_class=args.min_images_per_class,
        near_threshold=args.near_duplicate_threshold,
        samples_per_class=args.samples_per_class,
        num_workers=args.num_workers,
        seed=args.seed,
    )
    print(summary(report, Path(args.output_dir)))
    return 0


def split_command(argv: list[str]) -> int:
    from hf_classifier.cli.arguments import DataSourceArguments, SplitArguments, parse_args
    from hf_classifier.data.splits import split_without_leaks

    source, args = parse_args((DataSourceArguments, SplitArguments), argv, prog="hf-classifier split")
    report = split_without_leaks(
        source.load_data(),
        args.output_dir,
        val_size=args.val_size,
        test_size=args.test_size,
        seed=args.seed,
        near_threshold=args.near_duplicate_threshold,
        num_workers=args.num_workers,
    )
    sizes = ", ".join(f"{name} {size}" for name, size in report["sizes"].items())
    print(
        f"Wrote {sizes} to {args.output_dir} ({report['duplicate_groups_kept_together']} duplicate groups kept "
        f"in one split). Train on it with: hf-classifier train --split_dir {args.output_dir} ..."
    )
    return 0


def evaluate_command(argv: list[str]) -> int:
    from hf_classifier.cli.arguments import DataSourceArguments, EvaluateArguments, parse_args
    from hf_classifier.data.sources import DataSourceError
    from hf_classifier.evaluation.inference import load_predictor
    from hf_classifier.evaluation.reports import evaluate_model
    from hf_classifier.training.distributed import is_main_process

    source, args = parse_args((DataSourceArguments, EvaluateArguments), argv, prog="hf-classifier evaluate")
    data = None
    if source.label_column is None:
        # The model knows which column it learned (e.g. family): use it when the data has that column.
        label_name = load_predictor(args.model).label_name
        if label_name != "label":
            source.label_column = label_name
            try:
                data = source.load_data()
            except DataSourceError:
                source.label_column = None
    report = evaluate_model(
        args.model,
        data or source.load_data(),
        args.output_dir,
        tta=args.tta,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.num_workers,
        max_misclassified=args.max_misclassified,
        precision=args.precision,
        distributed=True,
    )
    if not is_main_process():
        return 0
    phylum = f", phylum macro-F1 {report['phylum']['f1_macro']:.4f}" if "phylum" in report else ""
    print(
        f"{report['num_images']} images: accuracy {report['accuracy']:.4f}, macro-F1 {report['f1_macro']:.4f}"
        f"{phylum}. Reports and pictures in {args.output_dir} (summary.md, metrics.json)."
    )
    return 0


def compare_command(argv: list[str]) -> int:
    from hf_classifier.cli.arguments import (
        ClassifierTrainingArguments,
        CompareArguments,
        DataArguments,
        ModelArguments,
        parse_args,
    )
    from hf_classifier.hierarchy.compare import compare

    data_args, model_args, training_args, args = parse_args(
        (DataArguments, ModelArguments, ClassifierTrainingArguments, CompareArguments),
        argv,
        prog="hf-classifier compare",
    )
    table = compare(
        data_args, model_args, training_args, [s.strip() for s in args.strategies.split(",") if s.strip()]
    )
    print(table)
    return 0


def prepare_command(argv: list[str]) -> int:
    from hf_classifier.cli.arguments import DataSourceArguments, PrepareArguments, parse_args
    from hf_classifier.data.checks import handle_bad_rows
    from hf_classifier.data.prepared import default_cache_dir, prepare_data, prepared_size

    source, args = parse_args((DataSourceArguments, PrepareArguments), argv, prog="hf-classifier prepare")
    cache_dir = args.cache_dir or str(default_cache_dir())
    size = prepared_size(args.image_size)
    data, bad = prepare_data(source.load_data(), size, cache_dir=cache_dir, num_proc=args.num_proc)
    data = handle_bad_rows(data, bad, skip=args.skip_bad_images, report_dir=args.output_dir or cache_dir)
    total = sum(len(split) for split in data.splits.values())
    print(
        f"Prepared {total} images (shorter side {size} px) in {cache_dir}"
        + (f"; {len(bad)} unreadable, listed in bad_images.csv" if bad else "")
        + ". Runs with the same data and --prepare reuse them."
    )
    return 0


def augment_preview_command(argv: list[str]) -> int:
    from hf_classifier.cli.arguments import AugmentPreviewArguments, DataSourceArguments, parse_args
    from hf_classifier.io_utils import write_png
    from hf_classifier.models.build import load_image_processor
    from hf_classifier.transforms.preview import augmentation_preview

    source, args = parse_args(
        (DataSourceArguments, AugmentPreviewArguments), argv, prog="hf-classifier augment-preview"
    )
    processor = load_image_processor(args.model_name_or_path) if args.model_name_or_path else None
    grid = augmentation_preview(
        source.load_data(),
        args.augmentation,
        processor=processor,
        image_size=args.image_size,
        num_images=args.num_images,
        num_versions=args.num_versions,
        seed=args.seed,
    )
    write_png(args.output, grid)
    print(f"Wrote {args.output}")
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train": (train_command, "fine-tune a checkpoint on an image folder, a metadata CSV or a data set"),
    "predict": (predict_command, "classify images: a folder, a CSV or files in, a CSV of id and label out"),
    "inspect": (
        inspect_command,
        "look at the data: counts, sizes, modes, unreadable files, duplicates, plots",
    ),
    "prepare": (
        prepare_command,
        "decode every photo once into a pre-resized, cached Arrow copy (fast epochs)",
    ),
    "split": (split_command, "write leak-free stratified train / validation / test CSVs"),
    "evaluate": (evaluate_command, "metrics, confusion matrix, misclassified images and summary for a model"),
    "push": (push_command, "upload a trained model (weights, config, processor, card) to the Hub"),
    "compare": (compare_command, "train flat, multitask and experts on the same splits and compare them"),
    "augment-preview": (augment_preview_command, "show originals beside augmented versions"),
    "quickstart": (quickstart_command, "run the whole pipeline on a small embedded data set (no download)"),
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
    from hf_classifier.data.sources import DataSourceError
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
