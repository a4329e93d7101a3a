"""`ImageClassificationTrainer`: `Trainer` for image classifiers, with

- uint8 batches normalised on the model's device;
- the fine-tuning plan (parameter groups by depth, layer decay, head rate, freezing schedule);
- a loss with class weights, label smoothing and mixup / cutmix targets;
- gradient health: per-depth gradient norms in the logs, a non-finite loss stops the run;
- optional EMA weights (evaluated, checkpointed and saved) and a class-balanced sampler;
- checkpoint weights restored through `from_pretrained` (see `modeling.load_saved_weights`);
- crash-safe outputs: files appear under their final names only when complete, and a checkpoint is
  marked complete only after every process has written its part (resume uses marked ones only).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy

from hf_classifier.data.sampling import EpochKeySampler, ShuffleSampler, step_rng
from hf_classifier.io_utils import atomic_path, staging_folder, write_json
from hf_classifier.models.build import AUXILIARY_HEAD, PHYLUM_LOGITS, PhylumHeadHooks, load_saved_weights
from hf_classifier.models.depth import gradient_norms_by_depth
from hf_classifier.models.finetuning import SUPPORTED_SCHEDULES, FinetunePlan
from hf_classifier.models.regularization import ClassBalancedSampler, Mixer, ModelEMA
from hf_classifier.transforms.pipeline import Normalize

logger = logging.getLogger(__name__)

EMA_FILE = "ema.safetensors"
PHYLUM_HEAD_FILE = "phylum_head.safetensors"
CHECKPOINT_COMPLETE = "checkpoint_complete.json"


def checkpoint_is_complete(folder: str | os.PathLike) -> bool:
    return Path(folder, CHECKPOINT_COMPLETE).is_file()


def numbered_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, complete or not, oldest (smallest N) first."""
    folder = Path(output_dir)
    steps = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if folder.is_dir() else ():
        suffix = path.name.rpartition("-")[2]
        if path.is_dir() and suffix.isdigit():
            steps.append((int(suffix), path))
    return [path for _, path in sorted(steps)]


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir` that were written to the end, oldest first."""
    return [path for path in numbered_checkpoints(output_dir) if checkpoint_is_complete(path)]


def rotate_complete_checkpoints(output_dir: str | os.PathLike, limit: int | None, best: str | None) -> None:
    """Keep the newest `limit` complete checkpoints (and the best one); delete older complete ones."""
    if not limit:
        return
    complete = complete_checkpoints(output_dir)
    keep = set(complete[-limit:])
    if best:
        keep.add(Path(best))
    for path in complete:
        if path not in keep:
            logger.info("Deleting older checkpoint %s (--save_total_limit %d).", path, limit)
            shutil.rmtree(path, ignore_errors=True)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` in `output_dir` that was written to the end; the ones a crash cut
    short are skipped, with a warning."""
    for path in reversed(numbered_checkpoints(output_dir)):
        if checkpoint_is_complete(path):
            return str(path)
        logger.warning("Skipping %s: it was not written to the end (the run stopped while saving it).", path)
    return None


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped before saving anything after it."""


class _SampleEpochCallback(TrainerCallback):
    """Tells the key sampler the epoch about to start. Accelerate's `set_epoch` does not reach it
    through every wrapper: resuming mid-epoch with several processes, the sampler sits under
    SkipBatchSampler > BatchSamplerShard > BatchSampler, and a fresh process would draw epoch 0."""

    def __init__(self, trainer: ImageClassificationTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.trainer._key_sampler is not None:
            # Trainer's own count: whole epochs done (a resumed run is part-way into the next one).
            self.trainer._key_sampler.set_epoch(math.floor(state.epoch or 0))


class _PlanCallback(TrainerCallback):
    """Learns the number of optimizer steps per epoch, and updates the EMA after each step."""

    def __init__(self, trainer: ImageClassificationTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):  # noqa: ANN001
        if train_dataloader is not None and hasattr(train_dataloader.dataset, "__len__"):  # not a stream
            batches = len(train_dataloader)
            accumulation = args.gradient_accumulation_steps
            self.trainer.plan.steps_per_epoch = max(
                batches // accumulation + int(batches % accumulation > 0), 1
            )

    def on_pre_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001
        # Trainer has computed (and clipped) the total norm here, which unscales fp16 gradients first.
        self.trainer.record_gradient_norms()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.trainer.ema is not None:
            self.trainer.ema.update(self.trainer.accelerator.unwrap_model(self.trainer.model))


class ImageClassificationTrainer(Trainer):
    def __init__(
        self,
        *args: Any,
        normalizer: Normalize,
        plan: FinetunePlan,
        class_weights: torch.Tensor | None = None,
        mixer: Mixer | None = None,
        ema: ModelEMA | None = None,
        sampler_labels: list[int] | None = None,
        phylum_head: PhylumHeadHooks | None = None,
        phylum_index: torch.Tensor | None = None,
        phylum_loss_weight: float = 0.3,
        channels_last: bool = False,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.normalizer = normalizer
        self.plan = plan
        self.class_weights = class_weights
        self.mixer = mixer
        self.ema = ema
        self.sampler_labels = sampler_labels
        # --hierarchy multitask: the auxiliary phylum head runs inside the model's forward.
        self.phylum_head = phylum_head
        self.family_to_phylum = (
            nn.functional.one_hot(phylum_index).float() if phylum_index is not None else None
        )
        self.phylum_loss_weight = phylum_loss_weight
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean
        # ...so Trainer need not count the labels of every batch, and all-gather the counts across the
        # processes (a collective per step), for a `num_items_in_batch` that compute_loss ignores.
        self.model_accepts_loss_kwargs = False
        self._frozen_for_epoch: int | None = None
        self._nonfinite = torch.zeros((), dtype=torch.bool)
        self._last_checked_step = 0
        self._gradient_norms: dict[str, float] = {}
        self._said_gradient_norms_unavailable = False
        self.add_callback(_PlanCallback(self))
        self._key_sampler: EpochKeySampler | None = None  # set when the train DataLoader is built
        self._micro_batch_step, self._micro_batch = -1, 0
        self.add_callback(_SampleEpochCallback(self))
        if plan.freezes:
            _keep_frozen_batch_norms_in_eval_mode(self.model)

    # ---- inputs -------------------------------------------------------------------------------

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        inputs = super()._prepare_inputs(inputs)
        # A model cast as a whole (DeepSpeed bf16, --bf16_full_eval) needs its own dtype as input;
        # under autocast the parameters stay fp32 and autocast casts.
        dtype = next(self.model.parameters()).dtype
        inputs["pixel_values"] = self.normalizer(inputs["pixel_values"], dtype=dtype).contiguous(
            memory_format=self.memory_format
        )
        return inputs

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """An order that depends only on (data seed, epoch). A data set read by `SampleKey`
        (`KeyedTrainingImages`) gets keys that carry the epoch to the workers, so that its
        augmentation is a pure function of (seed, epoch, sample) too."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        keyed = getattr(dataset, "accepts_sample_keys", False)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        if self.sampler_labels is not None:
            sampler = ClassBalancedSampler(self.sampler_labels, seed=seed)
        elif keyed:
            sampler = ShuffleSampler(len(dataset), seed=seed)
        else:
            return super()._get_train_sampler(train_dataset)
        if keyed:
            sampler = self._key_sampler = EpochKeySampler(sampler)
        return sampler

    # Evaluation and prediction workers live only while they run. Persistent ones would sit beside the
    # training loader's for the whole run (twice the worker processes and their memory), and Trainer
    # caches persistent evaluation loaders under one key, "eval", for any data set passed in (which once
    # made the test figures the validation ones).
    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        with _workers_not_persistent(self.args):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Any) -> Any:
        with _workers_not_persistent(self.args):
            return super().get_test_dataloader(test_dataset)

    def _mix_generator(self) -> Any:
        """Mixup / CutMix draws for this micro-batch, from (seed, optimizer step, micro-batch, process):
        a resumed run (which restarts at a step boundary) draws what an uninterrupted one did."""
        step = self.state.global_step
        self._micro_batch = self._micro_batch + 1 if step == self._micro_batch_step else 0
        self._micro_batch_step = step
        return step_rng(self.args.seed, step, self._micro_batch, self.args.process_index)

    # ---- optimizer and schedule ---------------------------------------------------------------

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            model = model if model is not None else self.model
            groups = self.plan.param_groups(model, self.args.weight_decay)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_cls(
                [{k: v for k, v in g.items() if k != "names"} for g in groups], **optimizer_kwargs
            )
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> Any:
        if not self.plan.freezes:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            schedule = str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type))
            if schedule not in SUPPORTED_SCHEDULES:
                raise ValueError(
                    f"--lr_scheduler_type {schedule} is not supported with --finetune_strategy "
                    f"{self.plan.strategy}; use one of {', '.join(SUPPORTED_SCHEDULES)}."
                )
            optimizer = optimizer or self.optimizer
            warmup = self.args.get_warmup_steps(num_training_steps)
            if schedule == "constant":
                warmup = 0
            lambdas = [
                self.plan.lr_lambda(group["start_epoch"], schedule, warmup, num_training_steps)
                for group in optimizer.param_groups
            ]
            self.lr_scheduler = LambdaLR(optimizer, lambdas)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # ---- one step -----------------------------------------------------------------------------

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        epoch = self.plan.epoch_of_step(self.state.global_step)
        if self.plan.freezes and epoch != self._frozen_for_epoch:
            changed = self.plan.apply_freezing(self.accelerator.unwrap_model(model), epoch)
            if changed and self._frozen_for_epoch is not None:
                logger.info("Epoch %d: %d parameter tensors start training.", epoch, len(changed))
            self._frozen_for_epoch = epoch
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        labels = inputs["labels"]
        pixel_values = inputs["pixel_values"]
        targets: torch.Tensor = labels
        if model.training and self.mixer is not None and self.mixer.enabled:
            pixel_values, targets = self.mixer(pixel_values, labels, rng=self._mix_generator())
        outputs = model(pixel_values=pixel_values)
        if self.class_weights is not None:  # moved once, kept there (a copy per step would sync)
            self.class_weights = self.class_weights.to(outputs.logits.device)
        loss = nn.functional.cross_entropy(
            outputs.logits.float(),
            targets,
            weight=self.class_weights,
            label_smoothing=self.args.label_smoothing_factor,
        )
        if model.training and self.phylum_head is not None:
            loss = loss + self.phylum_loss_weight * self._phylum_loss(outputs, labels, targets)
        if model.training:
            # Kept on the device (no sync per step); checked before anything is logged or saved.
            self._nonfinite = self._nonfinite.to(loss.device) | ~torch.isfinite(loss.detach())
        return (loss, outputs) if return_outputs else loss

    def _phylum_loss(self, outputs: Any, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        mapping = self.family_to_phylum = self.family_to_phylum.to(labels.device)
        # Family targets (one-hot, smoothed or mixed) summed within each phylum.
        family_targets = (
            targets if targets.is_floating_point() else nn.functional.one_hot(labels, len(mapping)).float()
        )
        return nn.functional.cross_entropy(outputs[PHYLUM_LOGITS].float(), family_targets @ mapping)

    def record_gradient_norms(self) -> None:
        """Per-depth gradient norms for the next training log, read once Trainer has unscaled the
        gradients (fp16). Under DeepSpeed and FSDP each process holds a shard of the gradients (or none
        in `param.grad`): no per-depth norms are logged there, and the log says so once."""
        if not self._logs_next_step():
            return
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            if not self._said_gradient_norms_unavailable:
                logger.info(
                    "Per-depth gradient norms are not logged under DeepSpeed / FSDP (sharded gradients); "
                    "Trainer's total grad_norm is."
                )
                self._said_gradient_norms_unavailable = True
            return
        self._gradient_norms = gradient_norms_by_depth(
            self.accelerator.unwrap_model(self.model), self.plan.depth_map
        )

    def _logs_next_step(self) -> bool:
        steps = self.state.logging_steps or 0
        return (
            self.args.logging_strategy == IntervalStrategy.STEPS
            and steps > 0
            and (self.state.global_step + 1) % steps == 0
        )

    def _maybe_log_save_evaluate(self, *args: Any, **kwargs: Any) -> None:
        if self.control.should_log or self.control.should_save or self.control.should_evaluate:
            self.check_finite_loss()  # a device sync: only when something is about to be logged or saved
        super()._maybe_log_save_evaluate(*args, **kwargs)

    def check_finite_loss(self) -> None:
        """Raise `NonFiniteLossError` if any training loss since the last check was NaN or infinite."""
        flag = self._nonfinite
        if self.args.world_size > 1:
            # On the device even when no step ran since (NCCL reduces GPU tensors only).
            flag = self.accelerator.reduce(flag.float().to(self.accelerator.device), reduction="sum") > 0
        if bool(flag):
            last = self._last_good_checkpoint()
            raise NonFiniteLossError(
                f"The training loss became NaN or infinite between steps {self._last_checked_step} and "
                f"{self.state.global_step} (epoch {self.state.epoch:.2f}). Training stopped; "
                + (
                    f"the last checkpoint before it, {last}, is intact. "
                    if last
                    else "no checkpoint was saved. "
                )
                + "Try a lower --learning_rate or --max_grad_norm, bf16 instead of fp16, or "
                "--finetune_strategy freeze_then_unfreeze."
            )
        self._last_checked_step = self.state.global_step

    def _last_good_checkpoint(self) -> str | None:
        return last_complete_checkpoint(self.args.output_dir) if self.args.output_dir else None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add what shows vanishing / exploding gradients and the rates
            logs.update({f"grad_norm/{key}": round(value, 6) for key, value in self._gradient_norms.items()})
            for group in self.optimizer.param_groups if self.optimizer is not None else ():
                if group.get("depth") in (0, self.plan.depth_map.num_blocks) and not group.get("is_head"):
                    key = "embeddings" if group["depth"] == 0 else "last_block"
                    logs[f"learning_rate/{key}"] = group["lr"]
        super().log(logs, start_time)

    # ---- evaluation, checkpoints, EMA -----------------------------------------------------------

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        if self.ema is None:
            return super().evaluate(*args, **kwargs)
        with self.ema.applied_to(self.accelerator.unwrap_model(self.model)):
            return super().evaluate(*args, **kwargs)

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        # Trainer's eval loss averages per-batch means; under several processes the last batch is
        # padded with repeated images, and their loss leaks into the mean. The cross-entropy computed
        # from the gathered logits (duplicates removed) is exact, and without label smoothing.
        output = super().evaluation_loop(*args, **kwargs)
        for key in [k for k in output.metrics if k.endswith("_cross_entropy")]:
            output.metrics[key.removesuffix("_cross_entropy") + "_loss"] = output.metrics.pop(key)
        return output

    def _extra_states(self) -> dict[str, Any]:
        """State kept in checkpoints beside the model's own file: EMA weights, the auxiliary head."""
        states = {}
        if self.ema is not None:
            states[EMA_FILE] = self.ema
        if self.phylum_head is not None:
            states[PHYLUM_HEAD_FILE] = getattr(self.accelerator.unwrap_model(self.model), AUXILIARY_HEAD)
        return states

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        self.check_finite_loss()
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:  # a folder being rewritten is not complete until marked again
            Path(folder, CHECKPOINT_COMPLETE).unlink(missing_ok=True)
        # Old checkpoints are deleted only once the new one is marked complete (below), so a crash
        # while saving always leaves a complete one behind.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            for filename, holder in self._extra_states().items():
                state = {k: v.detach().cpu().contiguous() for k, v in holder.state_dict().items()}
                with atomic_path(os.path.join(folder, filename)) as temporary:
                    save_file(state, temporary)
        # Every process has written its part (RNG states, optimizer shards) before the mark.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            write_json(
                os.path.join(folder, CHECKPOINT_COMPLETE),
                {"global_step": self.state.global_step, "epoch": self.state.epoch},
            )
            rotate_complete_checkpoints(run_dir, limit, self.state.best_model_checkpoint)

    # ---- crash-safe outputs ----------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return super()._save(output_dir, state_dict)
        with staging_folder(output_dir) as staging:
            super()._save(str(staging), state_dict)

    def save_state(self) -> None:
        if self.is_world_process_zero():
            with atomic_path(os.path.join(self.args.output_dir, "trainer_state.json")) as temporary:
                self.state.save_to_json(str(temporary))

    def save_metrics(self, split: str, metrics: dict[str, Any], combined: bool = True) -> None:
        if not self.is_world_process_zero():
            return
        write_json(os.path.join(self.args.output_dir, f"{split}_results.json"), metrics)
        if combined:
            path = Path(self.args.output_dir, "all_results.json")
            everything = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            write_json(path, {**everything, **metrics})

    def _load_extra_states(self, folder: str) -> None:
        for filename, holder in self._extra_states().items():
            path = os.path.join(folder, filename)
            if os.path.isfile(path):
                holder.load_state_dict(load_file(path))

    # Trainer restores weights with a plain load_state_dict, which loads nothing for architectures
    # whose saved key names differ from their in-memory ones (see modeling.load_saved_weights).
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if model is not None or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            self._load_extra_states(resume_from_checkpoint)
            return
        logger.info("Loading the weights of %s", resume_from_checkpoint)
        load_saved_weights(self.accelerator.unwrap_model(self.model), resume_from_checkpoint)
        self._load_extra_states(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            super()._load_best_model()
            self._load_extra_states(self.state.best_model_checkpoint)
            return
        logger.info(
            "Loading the best model, %s (%s %.4f)",
            self.state.best_model_checkpoint,
            self.args.metric_for_best_model,
            self.state.best_metric,
        )
        load_saved_weights(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint)
        self._load_extra_states(self.state.best_model_checkpoint)

    def use_ema_weights(self) -> None:
        """Make the averaged weights the model's own (before the final save)."""
        if self.ema is not None:
            self.ema.copy_to(self.accelerator.unwrap_model(self.model))


@contextlib.contextmanager
def _workers_not_persistent(args: Any) -> Any:
    persistent = args.dataloader_persistent_workers
    args.dataloader_persistent_workers = False
    try:
        yield
    finally:
        args.dataloader_persistent_workers = persistent


def _keep_frozen_batch_norms_in_eval_mode(model: nn.Module) -> None:
    """A frozen BatchNorm must not keep updating its running statistics in train mode."""

    def pre_hook(module: nn.Module, _inputs: Any) -> None:
        if module.training and not any(p.requires_grad for p in module.parameters(recurse=False)):
            module.eval()

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and any(True for _ in module.parameters()):
            module.register_forward_pre_hook(pre_hook)
