"""`train --hierarchy experts`: a parent classifier (e.g. of phyla) that routes each image to one model
per parent, the way the users split the problem by hand, as one folder that `predict` and `evaluate`
use like any model:

    OUTPUT_DIR/experts.json        which model serves which parent, the label list, label -> parent
    OUTPUT_DIR/router/             the parent classifier
    OUTPUT_DIR/family_<parent>/    one classifier per parent with 2+ labels
    OUTPUT_DIR/splits/             the splits every model was trained on (one split for all)
    OUTPUT_DIR/eval_results.json   the combined predictor on the validation split (test_results.json too)

`train_model` is the entry point of `hf-classifier train`: this for experts, `training.run.train`
(which plugs multitask in through the trainer's auxiliary task) otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from hf_classifier.cli.arguments import ClassifierTrainingArguments, DataArguments, ModelArguments
from hf_classifier.data.schema import DataSourceError, ImageData
from hf_classifier.evaluation.inference import EXPERTS_FILE
from hf_classifier.hierarchy.levels import parent_labels, relabel, subset
from hf_classifier.io_utils import write_json
from hf_classifier.training.run import TrainingOutcome, load_training_data, train

logger = logging.getLogger(__name__)


def train_model(
    data_args: DataArguments,
    model_args: ModelArguments,
    training_args: ClassifierTrainingArguments,
    **options: Any,
) -> TrainingOutcome:
    """What `hf-classifier train` runs: the experts for `--hierarchy experts`, else one model."""
    if training_args.hierarchy == "experts":
        return train_experts(data_args, model_args, training_args, **options)
    return train(data_args, model_args, training_args, **options)


def train_experts(
    data_args: DataArguments,
    model_args: ModelArguments,
    training_args: ClassifierTrainingArguments,
    **options: Any,
) -> TrainingOutcome:
    """The router and the per-parent models (`options`: `train`'s, e.g. callbacks), then their combined
    evaluation."""
    from hf_classifier.evaluation.reports import evaluate_splits

    if data_args.streaming:
        raise DataSourceError(
            f"--hierarchy experts trains one model per {data_args.parent_column or 'parent label'} on its images, which a "
            "stream cannot be divided into up front; use --hierarchy multitask (or none) with --streaming."
        )
    started = time.time()
    output_dir = Path(training_args.output_dir)
    with training_args.main_process_first(desc="loading and checking the data"):
        data = load_training_data(data_args, model_args, training_args)  # one split for every model
    parents = parent_labels(data, data_args.parent_column, "--hierarchy experts")

    def run(name: str, part: ImageData) -> None:
        args = dataclasses.replace(
            training_args,
            output_dir=str(output_dir / name),
            hierarchy="none",
            push_to_hub=False,
            resume_from_checkpoint=None,
        )
        logger.info("Training %s: %s", name, part.describe())
        train(data_args, model_args, args, data=part, **options)

    run("router", relabel(data, parents))
    experts, single_family = {}, {}
    for parent in parents.parents:
        members = [label for label in data.labels if parents.of[label] == parent]
        if len(members) == 1:
            single_family[parent] = members[0]  # routing alone decides the label
            continue
        part = subset(data, members)
        if "validation" not in part.splits:
            raise DataSourceError(
                f"{parents.column.capitalize()} {parent} has no validation images; it needs more images "
                f"per {data.label_name}."
            )
        run(f"family_{parent}", part)
        experts[parent] = f"family_{parent}"

    spec = {
        "kind": "experts",
        "label_name": data.label_name,
        "labels": data.labels,
        **parents.config(),
        "router": "router",
        "experts": experts,
        "single_family": single_family,
    }
    metrics: dict[str, float] = {}
    if training_args.should_save:
        write_json(output_dir / EXPERTS_FILE, spec)
        # The combined predictor, on exactly the images the single models are judged on.
        reports = evaluate_splits(
            output_dir,
            data,
            output_dir,
            progress=False,
            batch_size=training_args.per_device_eval_batch_size,
            num_workers=training_args.dataloader_num_workers,
        )
        for split, report in reports.items():
            prefix = "eval" if split == "validation" else "test"
            # The figures a flat run writes, counts included (bool is an int: not a figure).
            split_metrics = {
                f"{prefix}_{key}": value
                for key, value in report.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)
            }
            write_json(output_dir / f"{prefix}_results.json", split_metrics)
            metrics.update(split_metrics)
        metrics["train_runtime"] = time.time() - started
        write_json(output_dir / "all_results.json", metrics)
    return TrainingOutcome(output_dir=output_dir, metrics=metrics, data=data)
