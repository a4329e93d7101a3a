"""`train --hierarchy experts`: a phylum classifier that routes each image to one family model per
phylum, the way the users split the problem by hand, as one folder that `predict` and `evaluate` use
like any model:

    OUTPUT_DIR/experts.json        which model serves which phylum, the label list, family -> phylum
    OUTPUT_DIR/router/             the phylum classifier
    OUTPUT_DIR/family_<phylum>/    one family classifier per phylum with 2+ families
    OUTPUT_DIR/splits/             the splits every model was trained on (one split for all)
    OUTPUT_DIR/eval_results.json   the combined predictor on the validation split (test_results.json too)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from hf_classifier.cli.arguments import ClassifierTrainingArguments, DataArguments, ModelArguments
from hf_classifier.data.sources import DataSourceError, ImageData
from hf_classifier.evaluation.inference import EXPERTS_FILE
from hf_classifier.hierarchy.levels import PHYLUM, relabel, require_phylum_of, subset
from hf_classifier.io_utils import write_json

logger = logging.getLogger(__name__)


def train_experts(
    data_args: DataArguments,
    model_args: ModelArguments,
    training_args: ClassifierTrainingArguments,
    callbacks: list | None = None,
    concise_logs: bool = False,
) -> Any:
    from hf_classifier.evaluation.reports import evaluate_splits
    from hf_classifier.training.run import TrainingOutcome, load_training_data, train

    started = time.time()
    output_dir = Path(training_args.output_dir)
    with training_args.main_process_first(desc="loading and checking the data"):
        data = load_training_data(data_args, model_args, training_args)  # one split for every model
    phylum_of = require_phylum_of(data, "--hierarchy experts")

    def run(name: str, part: ImageData) -> None:
        args = dataclasses.replace(
            training_args,
            output_dir=str(output_dir / name),
            hierarchy="none",
            push_to_hub=False,
            resume_from_checkpoint=None,
        )
        logger.info("Training %s: %s", name, part.describe())
        train(data_args, model_args, args, callbacks=callbacks, concise_logs=concise_logs, data=part)

    run("router", relabel(data, phylum_of, PHYLUM))
    experts, single_family = {}, {}
    for phylum in sorted(set(phylum_of.values())):
        families = [label for label in data.labels if phylum_of[label] == phylum]
        if len(families) == 1:
            single_family[phylum] = families[0]  # routing alone decides the family
            continue
        part = subset(data, families)
        if "validation" not in part.splits:
            raise DataSourceError(
                f"Phylum {phylum} has no validation images; it needs more images per family."
            )
        run(f"family_{phylum}", part)
        experts[phylum] = f"family_{phylum}"

    spec = {
        "kind": "experts",
        "label_name": data.label_name,
        "labels": data.labels,
        "phylum_of": phylum_of,
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
            split_metrics = {
                f"{prefix}_{key}": value for key, value in report.items() if isinstance(value, float)
            }
            write_json(output_dir / f"{prefix}_results.json", split_metrics)
            metrics.update(split_metrics)
        metrics["train_runtime"] = time.time() - started
        write_json(output_dir / "all_results.json", metrics)
    return TrainingOutcome(output_dir=output_dir, metrics=metrics, data=data)
