"""Ready for GPUs and several processes, checked on the CPU: combinations that used to crash (two gloo
processes, CPU bf16 autocast, a model cast to bf16), combinations refused up front, no per-step host
synchronisation, and loader defaults that fit the machine."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import TINY_VIT, accelerate_launch, make_image_tree, save_checkpoint, train_argv
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_classifier.cli import arguments
from hf_classifier.cli.arguments import ClassifierTrainingArguments, OptionError
from hf_classifier.hierarchy import ParentLabels
from hf_classifier.hierarchy.multitask import ParentHead
from hf_classifier.models.build import AUXILIARY_LOGITS as PHYLUM_LOGITS
from hf_classifier.models.build import build_model, parameters_without_gradient
from hf_classifier.models.regularization import ModelEMA
from hf_classifier.transforms.pipeline import Normalize, PreprocessSpec

# phylum_family folders: --hierarchy multitask reads the phylum from the name.
MULTITASK_LAYOUT = {"chordata_ardeidae": 8, "chordata_felidae": 8, "arthropoda_apidae": 8}


def save_dinov2_checkpoint(folder: Path) -> Path:
    """A tiny DINOv2: its `mask_token` is used only for masked-image pretraining, never in fine-tuning."""
    from transformers import Dinov2Config, Dinov2ForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = Dinov2Config(**TINY_VIT, mlp_ratio=2, num_labels=10)
    Dinov2ForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


# ---- crashes that are fixed -------------------------------------------------------------------------


def test_multitask_dinov2_full_trains_under_ddp(tmp_path):
    """Two crashes in one run: DINOv2's never-used mask_token needs find_unused_parameters even for
    `full` (decided from the model), and with it on the phylum head must run inside the forward."""
    checkpoint = save_dinov2_checkpoint(tmp_path / "dinov2")
    data = make_image_tree(tmp_path / "data", MULTITASK_LAYOUT)
    out = tmp_path / "run"
    result = accelerate_launch(
        "hf_classifier",
        "train",
        *train_argv(
            out,
            data_dir=data,
            model_name_or_path=checkpoint,
            hierarchy="multitask",
            finetune_strategy="full",
            num_train_epochs=1,
            per_device_train_batch_size=4,
            validation_split_ratio=0.25,
            check_images=False,
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "find_unused_parameters on, 1 parameter tensors get no gradient" in result.stderr
    assert "mask_token" in result.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] >= 3  # the DINOv2 crash came at step 2
    assert not any(key.startswith("phylum_head") for key in load_file(out / "model.safetensors"))


def test_parameters_without_gradient_come_from_the_model_and_leave_it_as_it_was(tmp_path):
    dinov2 = build_model(str(save_dinov2_checkpoint(tmp_path / "dinov2")), ["a", "b"])
    assert parameters_without_gradient(dinov2, (32, 32)) == ["dinov2.embeddings.mask_token"]

    resnet = build_model(str(save_checkpoint(tmp_path / "resnet", "resnet")), ["a", "b"])
    resnet.eval()
    statistics = {name: buffer.clone() for name, buffer in resnet.named_buffers()}
    assert parameters_without_gradient(resnet, (32, 32)) == []
    assert not resnet.training
    assert all(torch.equal(buffer, statistics[name]) for name, buffer in resnet.named_buffers())
    assert all(parameter.grad is None for parameter in resnet.parameters())


def make_trainer(model, checkpoint: Path, output_dir: Path, args: dict | None = None, **kwargs):
    """An `ImageClassificationTrainer` around `model`, as `train` builds it (`args`: training flags)."""
    from hf_classifier.models.build import load_image_processor
    from hf_classifier.training.run import finetune_plan
    from hf_classifier.training.trainer import ImageClassificationTrainer
    from hf_classifier.transforms.pipeline import create_normalizer

    arguments = ClassifierTrainingArguments(
        output_dir=str(output_dir),
        report_to="none",
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **(args or {}),
    )
    return ImageClassificationTrainer(
        model=model,
        args=arguments,
        normalizer=create_normalizer(load_image_processor(str(checkpoint))),
        plan=finetune_plan(model, arguments),
        **kwargs,
    )


def uint8_examples(count: int, classes: int = 2) -> list[dict]:
    """In-memory training examples as the loader yields them (uint8 pixels, integer labels)."""
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "pixel_values": torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=generator),
            "labels": i % classes,
        }
        for i in range(count)
    ]


def test_multitask_on_a_pooled_cnn_trains_under_bf16_autocast(tmp_path):
    """ResNet's pooled features come out of autocast in bf16; the phylum head (fp32 weights) must run
    inside the forward, under the same autocast, or its matmul fails on mixed dtypes."""
    checkpoint = save_checkpoint(tmp_path / "resnet", "resnet")
    labels = ["chordata_a", "chordata_b", "arthropoda_c"]
    model = build_model(str(checkpoint), labels)
    phyla = ParentLabels(
        "phylum", {"chordata_a": "chordata", "chordata_b": "chordata", "arthropoda_c": "arthropoda"}
    )
    trainer = make_trainer(
        model, checkpoint, tmp_path / "run", auxiliary_task=ParentHead(model, labels, phyla, weight=0.3)
    )
    # What Accelerate does with mixed_precision bf16: the model's forward runs under autocast.
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)
    model.train()
    inputs = {"pixel_values": torch.rand(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 0])}
    loss, outputs = trainer.compute_loss(model, inputs, return_outputs=True)
    assert outputs[PHYLUM_LOGITS].dtype == torch.bfloat16 and outputs[PHYLUM_LOGITS].shape == (4, 2)
    loss.backward()
    assert torch.isfinite(loss) and model.phylum_head.weight.grad.abs().sum() > 0

    model.eval()  # evaluation sees a plain family classifier (no extra output, unchanged metrics)
    assert PHYLUM_LOGITS not in model(pixel_values=inputs["pixel_values"])


def test_a_model_cast_to_bf16_gets_bf16_inputs_and_keeps_a_fp32_average(tmp_path, convnext_checkpoint):
    """DeepSpeed's bf16 casts the model itself (no autocast): the normaliser must produce bf16, and the
    EMA must stay in fp32 (a bf16 average with decay 0.9999 never moves)."""
    model = build_model(str(convnext_checkpoint), ["a", "b"])
    ema = ModelEMA(model, decay=0.999)  # built from the fp32 model, as training does
    trainer = make_trainer(model, convnext_checkpoint, tmp_path / "run")
    model.to(torch.bfloat16)
    batch = trainer.model_inputs({"pixel_values": torch.zeros(2, 3, 32, 32, dtype=torch.uint8)})
    assert batch["pixel_values"].dtype == torch.bfloat16
    assert model(pixel_values=batch["pixel_values"]).logits.shape == (2, 2)

    name = "classifier.weight"
    before = ema.shadow[name].clone()
    with torch.no_grad():
        model.get_parameter(name).add_(1.0)
    ema.update(model)
    assert ema.shadow[name].dtype == torch.float32
    expected = before + 0.001 * (model.get_parameter(name).float() - before)
    assert torch.allclose(ema.shadow[name], expected, atol=1e-6)
    assert ModelEMA(model, decay=0.9999).shadow[name].dtype == torch.float32  # built from a bf16 model too


# ---- refused up front ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "flags", "message"),
    [
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, {}, "set fsdp_version: 2"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, {"ema_decay": 0.999}, "--ema_decay is not"),
        (
            {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"},
            {"hierarchy": "multitask"},
            "--hierarchy multitask is not",
        ),
        (
            {"ACCELERATE_USE_DEEPSPEED": "true"},
            {"finetune_strategy": "gradual_unfreeze", "num_train_epochs": 3},
            "use --finetune_strategy full",
        ),
    ],
)
def test_sharded_combinations_are_refused_before_any_data_is_read(
    monkeypatch, tmp_path, environment, flags, message
):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(OptionError, match=message) as refused:
        ClassifierTrainingArguments(output_dir=str(tmp_path), report_to="none", **flags)
    assert "\n" not in str(refused.value)


# ---- host synchronisation -----------------------------------------------------------------------


def test_normalize_copies_scale_and_shift_to_the_device_once(monkeypatch):
    """`meta` stands in for a GPU: count the host-to-device copies the normaliser makes."""
    normalize = Normalize(PreprocessSpec(resample=2, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    copies = []
    real_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        result = real_to(self, *args, **kwargs)
        if self.device.type == "cpu" and result.device.type == "meta":
            copies.append(self.shape)
        return result

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    batch = torch.zeros(4, 3, 8, 8, dtype=torch.uint8, device="meta")
    for _ in range(5):
        output = normalize(batch, dtype=torch.bfloat16)
    assert output.dtype == torch.bfloat16 and output.device.type == "meta"
    assert len(copies) == 2  # scale and shift, once for the whole run


class CountHostReads(TrainerCallback):
    """Counts reads of tensor values on the host (each one a device sync on a GPU) inside optimizer
    steps that log nothing."""

    READS = ("item", "tolist", "__bool__", "__float__", "__int__")

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.per_step: list[int] = []
        self.counting = False
        self.count = 0
        for name in self.READS:
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(real))

    def _counted(self, real):
        def read(tensor, *args, **kwargs):
            self.count += self.counting
            return real(tensor, *args, **kwargs)

        return read

    def on_step_begin(self, args, state, control, **kwargs):
        self.counting, self.count = True, 0

    def on_step_end(self, args, state, control, **kwargs):
        self.counting = False
        self.per_step.append(self.count)


def test_training_steps_read_nothing_back_from_the_device(monkeypatch, vit_checkpoint, tmp_path):
    from hf_classifier.transforms.pipeline import collate_examples

    model = build_model(str(vit_checkpoint), ["a", "b"])
    counter = CountHostReads(monkeypatch)
    trainer = make_trainer(
        model,
        vit_checkpoint,
        tmp_path / "run",
        # no step logs: a logging step reads the loss on purpose
        args={"num_train_epochs": 1, "per_device_train_batch_size": 4, "logging_steps": 1000},
        train_dataset=uint8_examples(16),
        data_collator=collate_examples,
        callbacks=[counter],
    )
    # No label count per step (all-gathered across the processes under DDP) for a loss that ignores it.
    assert trainer._get_num_items_in_batch([{"labels": torch.tensor([0, 1])}], torch.device("cpu")) is None
    trainer.train()
    assert counter.per_step == [0, 0, 0, 0]


def test_arguments_copy_pinned_batches_asynchronously(monkeypatch, tmp_path):
    monkeypatch.setattr(arguments, "_has_accelerator", lambda: True)  # pinning stays on
    args = ClassifierTrainingArguments(output_dir=str(tmp_path), report_to="none")
    assert args.dataloader_pin_memory and args.accelerator_config.non_blocking
    assert not args.logging_nan_inf_filter  # our own non-finite flag stops the run instead


def test_gradient_norms_by_depth_are_read_after_unscaling(vit_checkpoint, tmp_path):
    """fp16 scales the loss (by 2**16 at first); the per-depth norms must be the true ones, like
    Trainer's total `grad_norm`, which it computes after unscaling."""
    from hf_classifier.transforms.pipeline import collate_examples

    model = build_model(str(vit_checkpoint), ["a", "b"])
    trainer = make_trainer(
        model,
        vit_checkpoint,
        tmp_path / "run",
        args={
            "fp16": True,
            "use_cpu": True,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 4,
            "logging_steps": 2,
        },
        train_dataset=uint8_examples(16),
        data_collator=collate_examples,
    )
    # Accelerate scales fp16 losses on a GPU only; give the CPU run the same GradScaler.
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    trainer.accelerator.native_amp = True
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "grad_norm/head" in entry]
    assert len(logged) == 2
    for entry in logged:
        parts = [entry[f"grad_norm/{key}"] for key in ("embeddings", "first_block", "last_block", "head")]
        assert 0 < sum(part**2 for part in parts) ** 0.5 <= entry["grad_norm"] * 1.001


# ---- loader defaults ----------------------------------------------------------------------------


def test_default_workers_read_the_cpu_quota_and_leave_one_cpu_per_process(monkeypatch, tmp_path):
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert arguments.cpu_quota(tmp_path) == 3
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert arguments.cpu_quota(tmp_path) is None

    monkeypatch.setattr(arguments, "available_cpus", lambda: 64)
    monkeypatch.setattr(arguments, "cpu_quota", lambda: 16)  # docker run --cpus 16 on a 64-core host
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert arguments.default_num_workers() == 7  # 8 CPUs per process: 7 workers + the main process


def test_small_shared_memory_lowers_prefetching_and_says_how_to_fix_it(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(arguments, "shared_memory_free", lambda: 64 * 2**20)  # Docker's default
    with caplog.at_level(logging.WARNING, logger="hf_classifier.cli.arguments"):
        args = ClassifierTrainingArguments(
            output_dir=str(tmp_path),
            report_to="none",
            dataloader_num_workers=8,
            dataloader_prefetch_factor=4,
            per_device_train_batch_size=32,
        )
    # 8 workers x 4 batches x 32 images x 147 KiB = 154 MB; 8 x 1 x 32 images = 39 MB fits.
    assert (args.dataloader_num_workers, args.dataloader_prefetch_factor) == (8, 1)
    assert "--shm-size" in caplog.text and "/dev/shm has 64 MB free" in caplog.text


def test_default_batch_sizes_come_from_the_device(monkeypatch, tmp_path):
    args = ClassifierTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (32, 64)

    class Properties:
        total_memory = 141 * 2**30  # an H200

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Properties())
    assert arguments.default_batch_size() == 128


def test_evaluation_loaders_keep_no_workers_beside_the_training_loader(vit_checkpoint, tmp_path):
    """Persistent evaluation workers would sit beside the training loader's for the whole run (twice the
    worker processes), and Trainer caches persistent evaluation loaders under one key for any data set
    (so `evaluate(test)` once re-read validation). Evaluation and prediction loaders are built afresh."""
    from hf_classifier.transforms.pipeline import collate_examples

    examples = uint8_examples(8)
    trainer = make_trainer(
        build_model(str(vit_checkpoint), ["a", "b"]),
        vit_checkpoint,
        tmp_path / "run",
        train_dataset=examples,
        eval_dataset=examples[:4],
        data_collator=collate_examples,
    )
    trainer.args.dataloader_num_workers, trainer.args.dataloader_prefetch_factor = 2, 2
    trainer.args.dataloader_persistent_workers = True  # the default with workers: for the training loader
    assert trainer.get_train_dataloader().persistent_workers
    validation = trainer.get_eval_dataloader()
    other = trainer.get_eval_dataloader(examples)
    test = trainer.get_test_dataloader(examples[:6])
    assert not (validation.persistent_workers or other.persistent_workers or test.persistent_workers)
    assert [len(loader.dataset) for loader in (validation, other, test)] == [4, 8, 6]
    assert trainer.args.dataloader_persistent_workers  # restored for the next training loader
