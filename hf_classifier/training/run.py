"""Fine-tuning, top to bottom: data -> checks -> splits -> model -> transforms -> Trainer -> outputs.

Works unchanged under `accelerate launch` (Trainer runs on Accelerate); only the main process writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import PredictionOutput

from hf_classifier.cli.arguments import (
    ClassifierTrainingArguments,
    DataArguments,
    ModelArguments,
    sharding_backend,
)
from hf_classifier.data.checks import drop_bad_images, handle_bad_rows
from hf_classifier.data.prepared import auto_prepare_choice, prepare_data, stored_size_for
from hf_classifier.data.schema import IMAGE, LABEL, ImageData
from hf_classifier.data.splits import ensure_validation_split, write_splits
from hf_classifier.evaluation.metrics import build_compute_metrics
from hf_classifier.hierarchy import ParentLabels, config_entries
from hf_classifier.hierarchy.levels import parent_labels
from hf_classifier.hierarchy.multitask import ParentHead
from hf_classifier.hub.card import (
    base_model_license,
    card_dataset_id,
    write_model_card,
    write_training_summary,
)
from hf_classifier.hub.offline import is_local_path
from hf_classifier.models.build import (
    build_model,
    is_conv_net,
    load_image_processor,
    parameters_without_gradient,
)
from hf_classifier.models.depth import UnsupportedArchitectureError, flat_depth_map, map_depths
from hf_classifier.models.finetuning import FinetunePlan, describe_plan
from hf_classifier.models.regularization import Mixer, ModelEMA, class_weights
from hf_classifier.training.checkpoints import checkpoint_step, checkpoint_to_resume
from hf_classifier.training.distributed import release_process_group_at_exit
from hf_classifier.training.trainer import ImageClassificationTrainer
from hf_classifier.transforms.pipeline import (
    ExampleTransform,
    KeyedTrainingImages,
    collate_examples,
    create_normalizer,
    create_transform,
    spec_from_processor,
)

logger = logging.getLogger(__name__)

SPLITS_DIR = "splits"
# The final evaluation: (split, prefix of its figures in <prefix>_results.json and all_results.json).
FINAL_SPLITS = (("validation", "eval"), ("test", "test"))
STREAMED_BAD_IMAGES = "bad_images_streamed.tsv"


class EpochSummaryCallback(TrainerCallback):
    """One log line per evaluation, instead of Trainer's log dict per logging step."""

    def __init__(self) -> None:
        self.last_loss: float | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - Trainer's callback API
        if logs and "loss" in logs:
            self.last_loss = logs["loss"]

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
        if not state.is_world_process_zero or not metrics or "eval_accuracy" not in metrics:
            return
        scores = (
            f"validation accuracy {metrics['eval_accuracy']:.3f}, macro-F1 {metrics['eval_f1_macro']:.3f}"
        )
        loss = f"train loss {self.last_loss:.3f}, " if self.last_loss is not None else ""
        logger.info("epoch %d/%g: %s%s", round(state.epoch), args.num_train_epochs, loss, scores)

    def on_predict(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
        # The final evaluation of the kept model: one `predict` per split.
        if not state.is_world_process_zero or not metrics:
            return
        for prefix, split in (("eval", "validation"), ("test", "test")):
            if f"{prefix}_accuracy" in metrics:
                logger.info(
                    "best model: %s accuracy %.3f, macro-F1 %.3f (%d images)",
                    split,
                    metrics[f"{prefix}_accuracy"],
                    metrics[f"{prefix}_f1_macro"],
                    metrics.get(f"{prefix}_num_images", 0),
                )


@dataclass
class TrainingOutcome:
    output_dir: Path
    metrics: dict[str, float]
    data: ImageData


def load_training_data(
    data_args: DataArguments,
    model_args: ModelArguments,
    training_args: ClassifierTrainingArguments,
    processor: Any = None,
) -> ImageData:
    """Load the source, check every image (or prepare them: that checks them too), make the validation
    split, and record the splits."""
    output_dir = Path(training_args.output_dir)
    if data_args.streaming:
        # Nothing to check or split up front: the stream is read as training goes.
        from hf_classifier.data.streaming import load_streaming_data

        data = load_streaming_data(
            data_args, seed=training_args.seed, cache_dir=model_args.cache_dir, token=model_args.token
        )
        logger.info("Streaming %s", data.describe())
        if data_args.prepare == "auto":
            logger.info("Not preparing the photos: they are streamed, each read as training reaches it.")
        return data
    data = data_args.load_data(cache_dir=model_args.cache_dir, token=model_args.token)
    logger.info("Loaded %s", data.describe())
    report_dir = output_dir if training_args.should_save else None
    prepare = data_args.prepare
    if prepare:  # True or "auto": both need the size the copies would have
        processor = processor or load_image_processor(
            model_args.image_processor_name or model_args.model_name_or_path, **model_args.hub_kwargs()
        )
        size = stored_size_for(processor)
    if prepare == "auto":
        epochs = epochs_read(training_args, data_args.max_train_samples, len(data.splits["train"]))
        prepare, reason = auto_prepare_choice(data, size, epochs, data_args.prepared_cache_dir)
        logger.info(reason)
    if prepare:
        data, bad = prepare_data(
            data,
            size,
            cache_dir=data_args.prepared_cache_dir,
            num_proc=data_args.prepare_num_proc,
        )
        data = handle_bad_rows(data, bad, skip=data_args.skip_bad_images, report_dir=report_dir)
    elif data_args.check_images:
        data = drop_bad_images(data, skip=data_args.skip_bad_images, report_dir=report_dir)
    data = ensure_validation_split(data, data_args.validation_split_ratio, training_args.seed)
    if data_args.max_train_samples is not None:
        data.splits["train"] = _first(data.splits["train"], data_args.max_train_samples, training_args.seed)
    if data_args.max_eval_samples is not None:
        for name in ("validation", "test"):
            if name in data.splits:
                data.splits[name] = _first(data.splits[name], data_args.max_eval_samples, training_args.seed)
    if training_args.should_save:
        write_splits(data, output_dir / SPLITS_DIR)
    return data


def epochs_read(
    training_args: ClassifierTrainingArguments, max_train_samples: int | None, train_images: int
) -> float:
    """How many times training reads its images: --num_train_epochs, or --max_steps' batches over the
    training split (--max_train_samples of it, when given)."""
    if training_args.max_steps <= 0:
        return training_args.num_train_epochs
    if max_train_samples is not None:
        train_images = min(train_images, max_train_samples)
    per_step = (
        training_args.train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    )
    return training_args.max_steps * per_step / max(train_images, 1)


def _first(dataset, count: int, seed: int):
    return dataset.shuffle(seed=seed).select(range(min(count, len(dataset))))


def train(
    data_args: DataArguments,
    model_args: ModelArguments,
    training_args: ClassifierTrainingArguments,
    callbacks: list[TrainerCallback] | None = None,
    concise_logs: bool = False,
    data: ImageData | None = None,
) -> TrainingOutcome:
    """Fine-tune `model_args.model_name_or_path` on the data and write everything to OUTPUT_DIR.

    `concise_logs` replaces Trainer's per-step log dicts and metric tables with one line per epoch.
    `data` (already checked and split) replaces loading from `data_args`. The argument dataclasses
    are read, never written (what Trainer must not do itself is off in its own copy).
    """
    if data_args.streaming:  # a local copy, counted in steps (parse_args gives one already)
        training_args = training_args.for_streaming()
    if training_args.hierarchy == "experts":
        raise ValueError(
            "train() trains one model; train --hierarchy experts with hierarchy.experts.train_model."
        )
    started = time.time()
    set_seed(training_args.seed)
    release_process_group_at_exit()  # several processes: exit cleanly once training is done
    output_dir = Path(training_args.output_dir)
    if training_args.push_to_hub and training_args.should_save:
        from hf_classifier.hub.publish import check_can_push

        check_can_push(training_args.hub_model_id or output_dir.name)  # fail now, not after training

    processor = load_image_processor(
        model_args.image_processor_name or model_args.model_name_or_path, **model_args.hub_kwargs()
    )
    checkpoint = checkpoint_to_resume(training_args.resume_from_checkpoint, output_dir)
    if data is None:
        with training_args.main_process_first(desc="loading and checking the data"):
            data = load_training_data(data_args, model_args, training_args, processor)
    multitask = training_args.hierarchy == "multitask"
    parents = parent_labels(data, data_args.parent_column, "--hierarchy multitask" if multitask else None)

    model = build_model(
        model_args.model_name_or_path,
        data.labels,
        from_config=model_args.from_config,
        drop_path_rate=model_args.drop_path_rate,
        extra_config={
            "label_name": data.label_name,
            **config_entries(data_args.parent_column, parents),
            "hierarchy": training_args.hierarchy,
        },
        **model_args.hub_kwargs(),
    )
    auxiliary_task = (
        ParentHead(model, data.labels, parents, training_args.parent_loss_weight) if multitask else None
    )
    channels_last = training_args.channels_last
    if channels_last is None:
        channels_last = not training_args.use_cpu and torch.cuda.is_available() and is_conv_net(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    plan = finetune_plan(model, training_args)
    logger.info("Fine-tuning plan: %s", describe_plan(plan))
    train_labels = None if data_args.streaming else list(data.splits["train"][LABEL])

    # Decoding and resizing happen on the fly, per batch, in the DataLoader workers.
    eval_transform = ExampleTransform(create_transform(processor))
    train_transform = create_transform(processor, training=True, augmentation=data_args.augmentation)
    train_dataset = training_dataset(data, data_args, training_args, train_transform, checkpoint)
    eval_dataset = data.splits["validation"].with_transform(eval_transform)

    trainer = ImageClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        data_collator=collate_examples,
        compute_metrics=build_compute_metrics(),
        normalizer=create_normalizer(processor),
        plan=plan,
        class_weights=class_weights(
            train_labels or [],
            len(data.labels),
            training_args.class_weighting,
            training_args.effective_number_beta,
        ),
        mixer=Mixer(
            len(data.labels),
            training_args.mixup_alpha,
            training_args.cutmix_alpha,
            training_args.mix_probability,
        ),
        ema=ModelEMA(model, training_args.ema_decay) if training_args.ema_decay > 0 else None,
        sampler_labels=train_labels if training_args.balanced_sampler else None,
        auxiliary_task=auxiliary_task,
        channels_last=channels_last,
        ddp_find_unused_parameters=find_unused_parameters(model, training_args, processor),
        callbacks=list(callbacks or [])
        + (
            [EarlyStoppingCallback(training_args.early_stopping_patience)]
            if training_args.early_stopping_patience
            else []
        ),
    )
    if concise_logs:
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(EpochSummaryCallback())

    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.check_finite_loss()  # the last steps, if nothing was logged or saved after them
    trainer.use_ema_weights()
    trainer.save_model()  # the best model (load_best_model_at_end) with its image processor
    report = _metrics_reporter(trainer, concise_logs)
    report("train", train_result.metrics)
    trainer.save_state()

    metrics = dict(train_result.metrics)
    # The final evaluation, one pass per split, whose predictions feed <split>_results.json, the
    # evaluation_<split>/ reports and the card alike. `predict` builds a loader for the dataset it is
    # given, where `evaluate(dataset)` reuses the loader cached for validation whenever workers
    # persist (so the "test" figures were the validation ones). The test split plays no part in
    # choosing the model: it is scored here only.
    probabilities: dict[str, np.ndarray] = {}
    for split, prefix in FINAL_SPLITS:
        if split not in data.splits:
            continue
        dataset = data.splits[split].with_transform(eval_transform)
        output = trainer.predict(dataset, metric_key_prefix=prefix)
        trainer.log(output.metrics)  # as `evaluate` does: adds the epoch, reaches the report_to loggers
        report(prefix, output.metrics)
        metrics.update(output.metrics)
        probabilities[split] = _probabilities(output, data.splits[split])

    if trainer.is_world_process_zero():
        if data_args.streaming:
            from hf_classifier.data.streaming import tidy_bad_image_record

            data.skipped_images = tidy_bad_image_record(output_dir / STREAMED_BAD_IMAGES)
        describe_run(
            output_dir,
            data,
            data_args,
            model_args,
            training_args,
            time.time() - started,
            probabilities=probabilities,
            parents=parents,
        )
        if training_args.push_to_hub:  # our curated upload set; the trainer itself never pushes
            from hf_classifier.hub.publish import push_model_folder

            push_model_folder(
                output_dir,
                repo_id=training_args.hub_model_id or output_dir.name,
                token=training_args.hub_token,
                private=bool(training_args.hub_private_repo),
                revision=training_args.hub_revision,
            )
    return TrainingOutcome(output_dir=output_dir, metrics=metrics, data=data)


def describe_run(
    output_dir: Path,
    data: ImageData,
    data_args: DataArguments,
    model_args: ModelArguments,
    training_args: ClassifierTrainingArguments,
    training_seconds: float,
    *,
    probabilities: dict[str, np.ndarray],
    parents: ParentLabels | None = None,
) -> None:
    """Write evaluation_<split>/ from the final evaluation's `probabilities` (by split, rows in the
    split's order, columns in `data.labels` order), record the run in training_summary.json, and
    write the model card from what is now in the folder."""
    from hf_classifier.evaluation.reports import report_predictions

    for split, split_probabilities in probabilities.items():
        report_predictions(
            split_probabilities,
            [""] * len(split_probabilities),  # every image was read: training checked them
            data.only(split),
            output_dir / f"evaluation_{split}",
            labels=data.labels,
            parents=parents,
            model_name=str(output_dir),
        )
    checkpoint = model_args.model_name_or_path
    # The card names a Hub id only: a local folder's path is neither a Hub reference nor anyone's business.
    base_model = None if model_args.from_config or is_local_path(checkpoint) else checkpoint
    write_training_summary(
        output_dir,
        data=data,
        base_model=base_model,
        local_checkpoint=Path(checkpoint).name
        if is_local_path(checkpoint) and not model_args.from_config
        else None,
        dataset_id=card_dataset_id(data, data_args.card_dataset_id),
        license=training_args.license or base_model_license(checkpoint),
        augmentation=data_args.augmentation,
        training_args=training_args,
        training_seconds=training_seconds,
    )
    write_model_card(output_dir)


def training_dataset(
    data: ImageData,
    data_args: DataArguments,
    training_args: ClassifierTrainingArguments,
    transform: Any,
    checkpoint: str | None,
) -> Any:
    """The training split as Trainer reads it, decoded and augmented on the fly in the loader workers.

    A split on disk is read by SampleKey: each image's augmentation is a pure function of (seed, epoch,
    sample), so a resumed run and any number of workers see the same inputs. A resumed stream is not
    replayed up to the checkpoint (that would decode every image seen so far again): it starts at once,
    in a new order drawn from the seed and the step."""
    if not data_args.streaming:
        return KeyedTrainingImages(
            data.splits["train"].select_columns([IMAGE, LABEL]), transform, seed=training_args.seed
        )
    from hf_classifier.data.streaming import StreamTransform, check_shard_spread, training_stream

    check_shard_spread(data.splits["train"], training_args)
    seed = training_args.seed + (checkpoint_step(checkpoint) if checkpoint else 0)
    stream = training_stream(data.splits["train"], seed=seed, buffer_size=data_args.shuffle_buffer_size)
    return stream.map(
        StreamTransform(
            transform,
            skip_bad=data_args.skip_bad_images,
            record=str(Path(training_args.output_dir) / STREAMED_BAD_IMAGES),
            seed=seed,
            process_index=training_args.process_index,
        ),
        batched=True,
        batch_size=training_args.per_device_train_batch_size,
        remove_columns=stream.column_names,
    )


def find_unused_parameters(model: Any, args: ClassifierTrainingArguments, processor: Any) -> bool | None:
    """DDP's `find_unused_parameters` when the flag left it open (None otherwise, and without DDP):
    the freezing strategies set it on in the arguments; for `full`, on only when one forward/backward
    pass leaves some parameter without a gradient (e.g. DINOv2's mask_token). Off saves a graph
    traversal per step."""
    if args.ddp_find_unused_parameters is not None or args.world_size <= 1 or sharding_backend(args):
        return None  # DeepSpeed and FSDP do not use it
    size = getattr(spec_from_processor(processor), "output_size", None)
    if size is None:
        configured = getattr(model.config, "image_size", 224)
        size = tuple(configured) if isinstance(configured, (list, tuple)) else (configured, configured)
    unused = parameters_without_gradient(model, size)
    if unused:
        logger.info(
            "DDP: find_unused_parameters on, %d parameter tensors get no gradient (%s).",
            len(unused),
            ", ".join(unused[:3]) + (", ..." if len(unused) > 3 else ""),
        )
    return bool(unused)


def finetune_plan(model: Any, args: ClassifierTrainingArguments) -> FinetunePlan:
    """The parameter-to-depth map and the strategy's schedule for `model`."""
    try:
        depth_map = map_depths(model)
    except UnsupportedArchitectureError:
        if args.finetune_strategy != "full" or args.layer_decay != 1.0:
            raise
        depth_map = flat_depth_map(model)  # plain full fine-tuning needs no depths
    return FinetunePlan(
        depth_map=depth_map,
        strategy=args.finetune_strategy,
        learning_rate=args.learning_rate,
        head_learning_rate=args.head_learning_rate,
        layer_decay=args.layer_decay,
        freeze_epochs=args.freeze_epochs,
        unfreeze_blocks_per_epoch=args.unfreeze_blocks_per_epoch,
        num_train_epochs=args.num_train_epochs,
    )


def _probabilities(output: PredictionOutput, dataset: Any) -> np.ndarray:
    """The class probabilities of `Trainer.predict`'s logits, checked to be one row per image of
    `dataset`, in its order (the labels that came back are the dataset's own)."""
    logits = output.predictions[0] if isinstance(output.predictions, (tuple, list)) else output.predictions
    expected = np.asarray(dataset[LABEL])
    if output.label_ids is None or not np.array_equal(np.asarray(output.label_ids), expected):
        raise RuntimeError(
            f"The final evaluation returned {len(logits)} rows whose labels do not match the {len(expected)} "
            "images of the split in order; no figure was written from it."
        )
    return torch.from_numpy(np.asarray(logits)).float().softmax(dim=-1).numpy()


def _metrics_reporter(trainer: Trainer, concise: bool):
    """Save `<split>_results.json` (and all_results.json); print the table unless logs are concise."""

    def report(split: str, metrics: dict[str, float]) -> None:
        if not concise:
            trainer.log_metrics(split, metrics)
        trainer.save_metrics(split, metrics)

    return report
