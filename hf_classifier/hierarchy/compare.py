"""`hf-classifier compare`: does using the parent label (e.g. the phylum) help? Train flat, multitask
and experts on the same splits, evaluate each on the same held-out images, and report the evidence:
family macro-F1 with a paired bootstrap confidence interval against flat, the parent's macro-F1,
errors that cross parents, training time and parameters."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from hf_classifier.cli.arguments import ClassifierTrainingArguments, DataArguments, ModelArguments
from hf_classifier.data.schema import DataSourceError
from hf_classifier.evaluation.metrics import macro_f1
from hf_classifier.hierarchy import DEFAULT_PARENT_COLUMN, STRATEGY_HIERARCHY, plural
from hf_classifier.io_utils import write_csv, write_json, write_text

logger = logging.getLogger(__name__)

BOOTSTRAP_SAMPLES = 1000


def paired_bootstrap(
    y_true: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    num_classes: int,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Macro-F1(b) - macro-F1(a) on the same images, and its 95 % percentile interval."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(y_true), size=(samples, len(y_true)))
    differences = macro_f1(y_true[rows], b[rows], num_classes) - macro_f1(y_true[rows], a[rows], num_classes)
    observed = float(macro_f1(y_true, b, num_classes)[0] - macro_f1(y_true, a, num_classes)[0])
    low, high = np.percentile(differences, [2.5, 97.5])
    return observed, float(low), float(high)


def _read_predictions(folder: Path) -> tuple[list[str], list[str], list[str]]:
    with (folder / "predictions.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [r["id"] for r in rows], [r["true"] for r in rows], [r["predicted"] for r in rows]


def compare(
    data_args: DataArguments,
    model_args: ModelArguments,
    training_args: ClassifierTrainingArguments,
    strategies: list[str],
) -> str:
    """Train and evaluate every strategy; write comparison.{md,csv,json} to OUTPUT_DIR; return the table."""
    from hf_classifier.evaluation.inference import load_predictor
    from hf_classifier.evaluation.reports import METRICS_FILE
    from hf_classifier.hierarchy.experts import train_model

    unknown = [s for s in strategies if s not in STRATEGY_HIERARCHY]
    if unknown:
        raise ValueError(f"Unknown --strategies {unknown}; choose from {', '.join(STRATEGY_HIERARCHY)}.")
    if not data_args.split_dir:
        raise DataSourceError(
            "compare needs --split_dir (written by `hf-classifier split`), so that every strategy "
            "trains and is judged on the same images."
        )
    output_dir = Path(training_args.output_dir)
    data = data_args.load_data(cache_dir=model_args.cache_dir, token=model_args.token)
    held_out = next((split for split in ("test", "validation") if split in data.splits), None)
    if held_out is None:
        raise DataSourceError(
            f"--split_dir {data_args.split_dir} has no test.csv or validation.csv to judge the strategies on; "
            "write the splits with `hf-classifier split ... --test_size 0.1`."
        )

    column = data_args.parent_column or DEFAULT_PARENT_COLUMN
    results: list[dict[str, Any]] = []
    for strategy in strategies:
        folder = output_dir / strategy
        args = dataclasses.replace(
            training_args, output_dir=str(folder), hierarchy=STRATEGY_HIERARCHY[strategy], push_to_hub=False
        )
        started = time.time()
        train_model(data_args, model_args, args)  # also evaluates the saved model on validation and test
        seconds = time.time() - started
        report = json.loads((folder / f"evaluation_{held_out}" / METRICS_FILE).read_text(encoding="utf-8"))
        results.append(
            {
                "strategy": strategy,
                "family_f1_macro": report["f1_macro"],
                "family_accuracy": report["accuracy"],
                f"{column}_f1_macro": report.get(column, {}).get("f1_macro"),
                f"cross_{column}_errors": report.get(f"cross_{column}_errors", {}).get("count"),
                f"cross_{column}_error_rate": report.get(f"cross_{column}_errors", {}).get("rate"),
                "training_seconds": round(seconds, 1),
                "parameters": load_predictor(folder).num_parameters(),
                "evaluated_on": f"{held_out} ({report['num_images']} images)",
            }
        )

    if "flat" in strategies:
        ids, truth, flat = _read_predictions(output_dir / "flat" / f"evaluation_{held_out}")
        labels = sorted(set(truth) | set(flat))
        for result in results:
            if result["strategy"] == "flat":
                continue
            other_folder = output_dir / result["strategy"] / f"evaluation_{held_out}"
            other_ids, _, other = _read_predictions(other_folder)
            if other_ids != ids:
                raise DataSourceError(
                    f"{other_folder / 'predictions.csv'} and {output_dir / 'flat' / f'evaluation_{held_out}'} "
                    "list different images, so they cannot be compared; rerun compare into an empty "
                    "--output_dir."
                )
            labels = sorted(set(labels) | set(other))
            index = {label: i for i, label in enumerate(labels)}
            difference, low, high = paired_bootstrap(
                np.array([index[t] for t in truth]),
                np.array([index[p] for p in flat]),
                np.array([index[p] for p in other]),
                len(labels),
            )
            result["f1_macro_vs_flat"] = {"difference": difference, "ci95_low": low, "ci95_high": high}

    write_json(output_dir / "comparison.json", results)
    columns = [
        "strategy",
        "family_f1_macro",
        f"{column}_f1_macro",
        f"cross_{column}_errors",
        "training_seconds",
        "parameters",
    ]
    write_csv(output_dir / "comparison.csv", columns, [[r[c] for c in columns] for r in results])
    table = comparison_markdown(results, column)
    write_text(output_dir / "comparison.md", table)
    return table


def comparison_markdown(results: list[dict[str, Any]], column: str) -> str:
    def figure(value: Any, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = [
        f"# Does the {column} help? (judged on {results[0]['evaluated_on']})",
        "",
        f"| strategy | family macro-F1 | vs flat (95 % CI) | {column} macro-F1 | errors crossing {plural(column)} | "
        "training time | parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        versus = r.get("f1_macro_vs_flat")
        versus_text = (
            f"{versus['difference']:+.4f} ({versus['ci95_low']:+.4f} to {versus['ci95_high']:+.4f})"
            if versus
            else "-"
        )
        lines.append(
            f"| {r['strategy']} | {figure(r['family_f1_macro'])} | {versus_text} | "
            f"{figure(r[f'{column}_f1_macro'])} | {figure(r[f'cross_{column}_errors'])} | "
            f"{r['training_seconds']:.0f} s | {r['parameters']:,} |"
        )
    verdicts = []
    for r in results:
        versus = r.get("f1_macro_vs_flat")
        if not versus:
            continue
        if versus["ci95_low"] > 0:
            verdicts.append(
                f"{r['strategy']} beats flat: the whole 95 % interval of the macro-F1 gain is above 0."
            )
        elif versus["ci95_high"] < 0:
            verdicts.append(f"{r['strategy']} is worse than flat: the whole 95 % interval is below 0.")
        else:
            verdicts.append(
                f"{r['strategy']} and flat cannot be told apart on these images (the interval spans 0): "
                f"using the {column} is not justified by this evidence."
            )
    lines += (
        [""]
        + verdicts
        + [
            "",
            "The interval is a paired bootstrap over the held-out images "
            f"({BOOTSTRAP_SAMPLES} resamples): every strategy is judged on the same photos.",
        ]
    )
    return "\n".join(lines) + "\n"
