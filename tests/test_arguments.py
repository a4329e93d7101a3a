"""The argument dataclasses: every list of choices is declared once, as a `Literal` in the module that owns
the concept, and the CLI offers exactly the names that module acts on; predict and evaluate share their
inference flags."""

from __future__ import annotations

import inspect
from dataclasses import fields
from types import SimpleNamespace
from typing import get_args

import pytest
from helpers import TRAIN_ARGS
from transformers import HfArgumentParser

from hf_classifier import hierarchy
from hf_classifier.cli.arguments import (
    AugmentPreviewArguments,
    DataSourceArguments,
    EvaluateArguments,
    InferenceArguments,
    InspectArguments,
    OptionError,
    PredictArguments,
    PushArguments,
    SplitArguments,
    keywords_for,
    parse_args,
)
from hf_classifier.data import inspection, splits
from hf_classifier.data.sources import load_image_data
from hf_classifier.evaluation import options, predictions, reports
from hf_classifier.hub import publish
from hf_classifier.models import finetuning, regularization
from hf_classifier.transforms import pipeline, preview


def cli_choices(dataclass_types: tuple[type, ...], flag: str) -> tuple[str, ...]:
    (action,) = [action for action in HfArgumentParser(dataclass_types)._actions if action.dest == flag]
    return tuple(action.choices)


@pytest.mark.parametrize(
    ("dataclass_types", "flag", "runtime"),
    [
        (TRAIN_ARGS, "augmentation", tuple(pipeline.AUGMENTATION_PRESETS)),
        ((AugmentPreviewArguments,), "augmentation", tuple(pipeline.AUGMENTATION_PRESETS)),
        (TRAIN_ARGS, "finetune_strategy", finetuning.STRATEGIES),
        (TRAIN_ARGS, "class_weighting", regularization.CLASS_WEIGHTINGS),
        ((PredictArguments,), "tta", options.TTA_MODES),
        ((EvaluateArguments,), "tta", options.TTA_MODES),
        ((PredictArguments,), "precision", options.PRECISIONS),
        ((EvaluateArguments,), "precision", options.PRECISIONS),
        ((PredictArguments,), "device", get_args(options.Device)),
        (TRAIN_ARGS, "hierarchy", tuple(hierarchy.STRATEGY_HIERARCHY.values())),
    ],
)
def test_cli_choices_are_the_names_the_library_acts_on(dataclass_types, flag, runtime):
    assert cli_choices(dataclass_types, flag) == tuple(runtime)


def test_a_value_outside_the_choices_is_one_line_naming_them():
    with pytest.raises(
        OptionError, match=r"--finetune_strategy.*invalid choice: 'lora' \(choose from 'full', "
    ):
        parse_args(TRAIN_ARGS, ["--output_dir", "o", "--finetune_strategy", "lora"])


def test_predict_and_evaluate_share_the_inference_flags():
    shared = {field.name for field in fields(InferenceArguments)}
    # Every option of the inference engine that a user sets is one of the shared flags.
    assert shared == {field.name for field in fields(options.InferenceOptions)} - {
        "progress",
        "distributed",
    }
    predict, evaluate = PredictArguments(model="m", input=["x"]), EvaluateArguments(model="m", output_dir="o")
    assert (predict.batch_size, evaluate.batch_size) == (32, 64)
    help_of = {
        kind: {field.name: field.metadata["help"] for field in fields(kind) if field.name in shared}
        for kind in (PredictArguments, EvaluateArguments)
    }
    assert help_of[PredictArguments] == help_of[EvaluateArguments]
    assert options.InferenceOptions.of(evaluate).batch_size == 64


def test_unknown_compare_strategies_stop_at_the_flags(capsys):
    from hf_classifier.cli.commands import main

    assert main(["compare", "--output_dir", "o", "--split_dir", "s", "--strategies", "flat,experts,moe"]) == 1
    error = capsys.readouterr().err.strip()
    assert error == (
        "hf-classifier compare: error: --strategies 'flat,experts,moe': choose one or more of flat, multitask, "
        "experts, comma-separated."
    )


def test_keywords_for_hands_over_the_fields_a_function_names():
    def library(data, *, tiny_size=64, seed=0, **rest):
        return data

    args = SimpleNamespace(data="d", tiny_size=32, unrelated=1)
    assert keywords_for(library, args, seed=7) == {"tiny_size": 32, "seed": 7}


INFERENCE_FLAGS = {field.name for field in fields(InferenceArguments)}


@pytest.mark.parametrize(
    ("function", "arguments", "passed_otherwise"),
    [
        (load_image_data, DataSourceArguments, {"parent_column"}),
        (inspection.inspect, InspectArguments, {"output_dir", "near_duplicate_threshold"}),
        (splits.split_without_leaks, SplitArguments, {"output_dir", "near_duplicate_threshold"}),
        (
            preview.augmentation_preview,
            AugmentPreviewArguments,
            {"augmentation", "output", "model_name_or_path"},
        ),
        (publish.push_model_folder, PushArguments, {"model_dir"}),
        (predictions.predict, PredictArguments, {"model", "input", "output", *INFERENCE_FLAGS}),
        (reports.evaluate_model, EvaluateArguments, {"model", "output_dir", *INFERENCE_FLAGS}),
    ],
)
def test_every_flag_reaches_the_library_by_name(function, arguments, passed_otherwise):
    """A flag the library function does not name would be dropped by `keywords_for`, silently."""
    keyword_only = {
        name for name, p in inspect.signature(function).parameters.items() if p.kind is p.KEYWORD_ONLY
    }
    assert {field.name for field in fields(arguments)} - passed_otherwise <= keyword_only


def test_parent_loss_weight_keeps_its_earlier_phylum_name(tmp_path):
    base = ["--data_dir", "d", "--output_dir", str(tmp_path)]
    weights = {
        tuple(flags): parse_args(TRAIN_ARGS, base + flags)[2].parent_loss_weight
        for flags in ([], ["--parent_loss_weight", "0.7"], ["--phylum_loss_weight", "0.5"])
    }
    assert weights == {(): 0.3, ("--parent_loss_weight", "0.7"): 0.7, ("--phylum_loss_weight", "0.5"): 0.5}
    with pytest.raises(OptionError, match="--parent_loss_weight must be >= 0"):
        parse_args(TRAIN_ARGS, base + ["--phylum_loss_weight", "-1"])
