"""Fine-tuning with the HF Trainer, with an optional pruner riding along as a callback.

Data flows one way: recipe -> pruner -> PruningCallback (masks every step) -> finalize ->
checkpoint + report. Dense fine-tuning is the same run without a pruner.

Resumable runs: every ``checkpoint_every`` steps the Trainer writes a checkpoint (model with its
parametrisations, optimizer, scheduler, RNG states, trainer state) and the callback adds the
pruner's own state and then a marker file; only checkpoints with the marker are resumed from,
so one cut short by a kill is never picked up.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from bermo_prune.data import get_task, load_split, metric_for_trainer, subsample, tokenize_dataset
from bermo_prune.errors import BermoPruneError
from bermo_prune.models import load_classifier
from bermo_prune.pruning.distributed import any_process, average_, world_size
from bermo_prune.pruning.masks import sparsity_report, select_modules
from bermo_prune.recipes import DEFAULT_INCLUDE, DistillationSpec, DivergenceSpec, TrainingSpec

LOG_EVERY = 10
COMPLETE_MARKER = "bermo_prune_complete"
PRUNER_STATE = "pruner_state.safetensors"

# The pieces of the optimised loss, logged each on its own beside the Trainer's total ``loss``:
#   loss = (1 - alpha) * task_loss + alpha * distillation + hidden_weight * hidden_distillation
#          + the pruner's loss terms (already weighted by the pruner)
# without distillation, loss = task_loss + the pruner's terms.
TASK_LOSS, DISTILLATION, HIDDEN_DISTILLATION = "task_loss", "distillation", "hidden_distillation"
# Log keys a pruner's term must not take: a clashing term is logged as ``pruner_<name>``.
RESERVED_LOG_KEYS = frozenset({"loss", TASK_LOSS, DISTILLATION, HIDDEN_DISTILLATION, "sparsity", "step", "epoch",
                               "learning_rate", "grad_norm"})
# Trainer log entries that are not about the loss or the pruner: left out of the report's loss curve.
NOT_IN_LOSS_CURVE = ("epoch", "learning_rate", "grad_norm", "num_input_tokens_seen")

# A run whose pruner trailed its schedule by more than this at the freeze is ``off_schedule``:
# its sparsity was set by the freeze, not reached by the pruner along the way.
OFF_SCHEDULE_MARGIN = 0.05


@dataclass
class DivergenceGuard:
    """Notices a non-finite loss as soon as it happens so the run stops cleanly."""

    spec: DivergenceSpec
    reason: str | None = None

    def check_loss(self, loss: torch.Tensor, step: int) -> None:
        if self.reason is None and not torch.isfinite(loss.detach()).all():
            self.reason = f"non-finite loss at step {step}"

    def check_predictions(self, task, predictions: np.ndarray, metric: float | None) -> None:
        if self.reason is not None:
            return
        if not task.is_regression and len(predictions):
            counts = np.bincount(predictions.argmax(-1), minlength=task.num_labels)
            share = counts.max() / counts.sum()
            if share >= self.spec.collapse_fraction:
                self.reason = f"predictions collapsed: {share:.1%} of dev examples in class {counts.argmax()}"
                return
        if metric is None or not math.isfinite(metric):
            self.reason = "dev metric is not finite"
        elif self.spec.min_metric is not None and metric < self.spec.min_metric:
            self.reason = f"dev metric {metric:.4f} below the recipe's min_metric {self.spec.min_metric}"


class LossTermMeter:
    """Averages each piece of the loss over a logging interval exactly as the Trainer averages
    ``loss``: each micro-batch counts 1 / (its gradient-accumulation steps), the sum is divided by
    the optimizer steps since the last log and averaged over processes. A piece missing from a
    step (a penalty outside its window) counts 0 there, so the pieces keep adding up to the loss."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.since_step: int | None = None

    def add(self, pieces: dict[str, torch.Tensor], step: int, weight: float = 1.0) -> None:
        if self.since_step is None:
            self.since_step = step  # optimizer steps done before this interval's first micro-batch
        for name, value in pieces.items():
            value = value.detach().float() * weight
            self.sums[name] = self.sums[name] + value if name in self.sums else value

    def pop_means(self, step: int) -> dict[str, float]:
        """The interval's means (identical in every process), and a fresh interval. Every process
        must call it at the same point: it all-reduces under torch.distributed."""
        names = sorted(self.sums)  # the same pieces, in the same order, in every process
        steps = max(1, step - (self.since_step if self.since_step is not None else step))
        sums = torch.stack([self.sums[name] for name in names]) if names else None
        self.sums, self.since_step = {}, None
        if sums is None:
            return {}
        average_([sums])  # as the Trainer gathers and averages its loss
        return {name: value / steps for name, value in zip(names, sums.tolist())}


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches in an order fixed by (seed, epoch). The stock sampler draws from the
    global RNG when an epoch starts, so a run resumed mid-epoch would see other batches."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        return super().__iter__()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, regression: bool) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, times T^2 so its
    gradients keep their scale across temperatures (Hinton et al. 2015); MSE for regression."""
    if regression:
        return torch.nn.functional.mse_loss(student, teacher)
    log_p_student = torch.log_softmax(student / temperature, dim=-1)
    log_p_teacher = torch.log_softmax(teacher / temperature, dim=-1)
    kl = torch.nn.functional.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def hidden_state_loss(student_states, teacher_states, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over encoder layers (the embedding output excluded) of the squared error per real
    token and hidden unit between the student's and the teacher's layer outputs."""
    mask = attention_mask.unsqueeze(-1).to(student_states[-1].dtype)
    elements = mask.sum() * student_states[-1].shape[-1]
    errors = [((s - t).pow(2) * mask).sum() / elements for s, t in zip(student_states[1:], teacher_states[1:])]
    return torch.stack(errors).mean()


class PruningTrainer(Trainer):
    """Adds the pruner's loss terms and optimizer groups, distils from a teacher if one is given,
    keeps each piece of the loss for the logs (``loss_meter``), and watches the loss for divergence."""

    def __init__(self, *args, pruner=None, guard: DivergenceGuard, mix_learning_rate: float, teacher=None,
                 distillation: DistillationSpec | None = None, loss_meter: LossTermMeter | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # Our models return a mean loss and ignore num_items_in_batch; left on, the Trainer would
        # scale the task loss by the number of processes (but not the pruner's and distillation
        # terms added here) and stop averaging over gradient-accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.mix_learning_rate = mix_learning_rate
        self.pruner = pruner
        if pruner is not None:
            pruner.to(next(self.model.parameters()).device)
        self.guard = guard
        self.teacher = teacher.to(self.args.device).eval() if teacher is not None else None
        self.distillation = distillation
        self.loss_meter = loss_meter if loss_meter is not None else LossTermMeter()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation: the task loss alone
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        layerwise = self.teacher is not None and self.distillation.hidden_weight > 0
        if layerwise:
            inputs = {**inputs, "output_hidden_states": True}
        task_loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        weighted = [(TASK_LOSS, 1.0, task_loss)]  # (name, weight in the loss, value)
        if self.teacher is not None:
            weighted = self._distillation_pieces(inputs, outputs, task_loss, layerwise)
        weighted += [(name, 1.0, term) for name, term in self._pruner_terms().items()]
        loss = sum(weight * value for _, weight, value in weighted)
        # The Trainer scales each micro-batch's loss by 1 / its accumulation steps before it sums it for the log.
        self.loss_meter.add({name: value for name, _, value in weighted}, self.state.global_step,
                            1.0 / getattr(self, "current_gradient_accumulation_steps", 1))
        self.guard.check_loss(loss, self.state.global_step)
        return (loss, outputs) if return_outputs else loss

    def _distillation_pieces(self, inputs, outputs, task_loss, layerwise: bool) -> list[tuple[str, float, torch.Tensor]]:
        with torch.no_grad():
            teacher_outputs = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"})
        d = self.distillation
        soft = distillation_loss(outputs.logits, teacher_outputs.logits, d.temperature, self.teacher.config.num_labels == 1)
        pieces = [(TASK_LOSS, 1 - d.alpha, task_loss), (DISTILLATION, d.alpha, soft)]
        if layerwise:
            mask = inputs.get("attention_mask")
            if mask is None:
                mask = torch.ones(outputs.hidden_states[-1].shape[:2], device=task_loss.device)
            hidden = hidden_state_loss(outputs.hidden_states, teacher_outputs.hidden_states, mask)
            pieces.append((HIDDEN_DISTILLATION, d.hidden_weight, hidden))
        return pieces

    def _pruner_terms(self) -> dict[str, torch.Tensor]:
        if self.pruner is None:
            return {}
        terms = self.pruner.loss_terms()
        if not terms:  # a pruner that still implements penalty() alone
            extra = self.pruner.penalty()
            terms = {"penalty": extra} if extra is not None else {}
        return {f"pruner_{name}" if name in RESERVED_LOG_KEYS else name: term for name, term in terms.items()}

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            return EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, self.args.data_seed)
        return sampler

    def _save(self, output_dir=None, state_dict=None):
        """Checkpoints hold the parametrised model as is (masks, scores, gates included): a plain
        safetensors state dict, since save_pretrained does not know parametrisations."""
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        safetensors.torch.save_model(self.model, os.path.join(output_dir, "model.safetensors"))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        safetensors.torch.load_model(model or self.model, os.path.join(resume_from_checkpoint, "model.safetensors"))

    def create_optimizer(self, model=None):
        if self.optimizer is not None:  # built already (the Trainer may ask twice): its groups are in it
            return self.optimizer
        optimizer = super().create_optimizer(model)
        groups = self.pruner.param_groups() if self.pruner is not None else []
        mix = [p for n, p in self.model.named_parameters() if n.startswith("scalar_mix.")]
        if mix:  # a handful of scalars: at the encoder's lr they would barely leave uniform
            groups = groups + [{"params": mix, "lr": self.mix_learning_rate, "weight_decay": 0.0}]
        own = {id(p) for g in groups for p in g["params"]}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in own]
        for group in groups:
            optimizer.add_param_group(dict(group))
        return optimizer


class PruningCallback(TrainerCallback):
    def __init__(self, pruner, guard: DivergenceGuard, loss_meter: LossTermMeter | None = None, on_plan=None):
        self.pruner = pruner
        self.guard = guard
        self.loss_meter = loss_meter if loss_meter is not None else LossTermMeter()
        self.on_plan = on_plan
        self.plan: dict | None = None
        self.save_after_evaluation = False

    def on_train_begin(self, args, state, control, **kwargs):
        if self.pruner is None:
            return
        # Several processes split each epoch's batches: the Trainer knows the real step count.
        if self.pruner.total_steps != state.max_steps:
            self.pruner.set_total_steps(state.max_steps)
        self.plan = self.pruner.plan()
        if self.on_plan is not None:
            self.on_plan(self.plan)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.pruner is not None:
            if world_size() > 1:  # DDP averages the model's gradients only, not the pruner's own
                average_(p.grad for p in self.pruner.external_parameters() if p.grad is not None)
            self.pruner.before_optimizer_step()

    def on_step_end(self, args, state, control, **kwargs):
        if self.pruner is not None:
            self.pruner.zero_external_grads()
            self.pruner.on_step_end(state.global_step)
            if control.should_save:
                self.pruner.sync()
        if control.should_save and float(state.epoch).is_integer():
            # The Trainer would save before the end-of-epoch evaluation, and a run resumed from
            # that checkpoint would never have it: save once the evaluation is logged.
            control.should_save = False
            self.save_after_evaluation = True
        # All processes must stop at the same step: one that trained on would wait for the others
        # in its next gradient all-reduce for ever.
        if any_process(self.guard.reason is not None, args.device) and self.guard.reason is None:
            self.guard.reason = f"non-finite loss in another process by step {state.global_step}"
        if self.guard.reason is not None:
            control.should_training_stop = True
            control.should_evaluate = False
            control.should_save = self.save_after_evaluation = False

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.save_after_evaluation:
            control.should_save = True
            self.save_after_evaluation = False

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.pruner is not None:
            safetensors.torch.save_file(self.pruner.state_dict(), str(folder / PRUNER_STATE))
        (folder / COMPLETE_MARKER).write_text("complete\n")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:  # evaluation and end-of-training entries
            return
        extra = self.loss_meter.pop_means(state.global_step)
        if self.pruner is not None:
            extra.update({"sparsity": round(self.pruner.current_sparsity(), 6), **self.pruner.state_summary()})
        logs.update(extra)  # for the progress bar
        state.log_history[-1].update(extra)  # for the loss curve in the report


class RichProgressCallback(TrainerCallback):
    """A rich progress bar with the live task loss (the model's own, without penalties and
    distillation, so runs compare), sparsity and dev metric."""

    def __init__(self, description: str, metric_name: str):
        self.description = description
        self.metric_name = metric_name
        self.progress = None
        self.fields = {"loss": "-", "sparsity": "-", "metric": "-"}

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("task loss {task.fields[loss]}  sparsity {task.fields[sparsity]}  dev {task.fields[metric]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=state.max_steps, **self.fields)

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        loss = logs.get(TASK_LOSS, logs.get("loss"))
        if loss is not None:
            self.fields["loss"] = f"{loss:.3f}"
        if "sparsity" in logs:
            self.fields["sparsity"] = f"{logs['sparsity']:.1%}"
        self.progress.update(self.task, **self.fields)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(f"eval_{self.metric_name}")
        if value is not None:
            self.fields["metric"] = f"{value:.4f}"
            self.progress.update(self.task, **self.fields)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()


@dataclass
class RunResult:
    status: str
    reason: str | None
    metrics: dict
    best_metric: float | None
    main_metric: str
    sparsity: dict
    steps: int
    train_examples: int
    wall_time_s: float
    train_examples_per_s: float
    loss_curve: list[dict] = field(default_factory=list)
    eval_history: list[dict] = field(default_factory=list)
    layer_weights: list[float] | None = None
    gamma: float | None = None
    plan: dict | None = None  # the pruner's plan in optimizer steps (Pruner.plan), with its warnings
    # What the freeze did: the pruner's own sparsity just before it, and the jump to the final sparsity.
    sparsity_before_freeze: float | None = None
    freeze_jump: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def train_and_evaluate(
    model,
    tokenizer,
    task_name: str,
    training: TrainingSpec,
    out_dir: str | Path,
    *,
    seed: int = 0,
    data_dir: str | None = None,
    pruner=None,
    divergence: DivergenceSpec | None = None,
    progress: bool = True,
    description: str = "train",
    checkpoint_every: int = 0,
    resume: bool = False,
    on_plan=None,
) -> RunResult:
    """Fine-tune ``model`` on the task (pruning it if a pruner is given), finalise the masks and
    evaluate on dev. ``model`` is left as a plain model holding real zeros. With
    ``checkpoint_every``, resumable checkpoints go to ``out_dir/trainer``; with ``resume``, the
    run continues from the last complete one there (if any). ``on_plan(plan)`` is called once
    the true step count is known, with the pruner's plan (:meth:`Pruner.plan`), before the first step."""
    task = get_task(task_name)
    train = subsample(load_split(task.name, "train", data_dir), training.max_train_samples, seed)
    dev = load_split(task.name, "dev", data_dir)
    train_tok = tokenize_dataset(train, tokenizer, task.name, training.max_length)
    dev_tok = tokenize_dataset(dev, tokenizer, task.name, training.max_length)

    guard = DivergenceGuard(divergence or DivergenceSpec())
    total_steps = _total_steps(train_tok, training)
    target_names = list(select_modules(model, [DEFAULT_INCLUDE]).keys())
    if pruner is not None:
        pruner.attach(model, total_steps)
        target_names = list(pruner.modules)
    args = TrainingArguments(
        output_dir=str(Path(out_dir) / "trainer"),
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=max(64, training.batch_size),
        learning_rate=training.learning_rate,
        num_train_epochs=training.epochs,
        warmup_steps=training.warmup_ratio,
        weight_decay=training.weight_decay,
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length",
        eval_strategy="epoch",
        save_strategy="steps" if checkpoint_every else "no",
        save_steps=checkpoint_every or 500,
        save_total_limit=2,  # the newest may be cut short by a kill; the one before is whole
        logging_strategy="steps",
        logging_steps=max(1, min(LOG_EVERY, total_steps // 20)),  # a loss curve even for short runs
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        ddp_broadcast_buffers=False,  # masks agree by construction (see Pruner.sync); scores must not be overwritten
        # learned gates and scores stop taking part in the forward pass once the masks are fixed
        ddp_find_unused_parameters=pruner is not None and bool(pruner.param_groups()),
    )
    loss_meter = LossTermMeter()
    pruning_callback = PruningCallback(pruner, guard, loss_meter, on_plan)
    callbacks = [pruning_callback]
    if progress:
        callbacks.append(RichProgressCallback(description, task.main_metric))
    trainer = PruningTrainer(
        model=model,
        args=args,
        train_dataset=train_tok,
        eval_dataset=dev_tok,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=metric_for_trainer(task.name),
        callbacks=callbacks,
        pruner=pruner,
        guard=guard,
        mix_learning_rate=training.mix_learning_rate,
        teacher=load_teacher(training.distillation, model, task) if training.distillation else None,
        distillation=training.distillation,
        loss_meter=loss_meter,
    )
    trainer.remove_callback(PrinterCallback)  # our own progress bar (or silence) replaces it

    resume_from = None
    if resume:
        remove_incomplete_checkpoints(Path(out_dir) / "trainer")
        resume_from = last_complete_checkpoint(Path(out_dir) / "trainer")
    if resume_from is not None and pruner is not None:
        pruner.load_state_dict(safetensors.torch.load_file(str(resume_from / PRUNER_STATE)))

    start = time.perf_counter()
    try:
        train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused optimizer/RNG state
        if resume_from is None:
            raise
        raise BermoPruneError(f"cannot resume from {resume_from}: {str(exc).splitlines()[0]}") from None
    wall = time.perf_counter() - start
    if pruner is not None:
        pruner.finalize()

    prediction = trainer.predict(dev_tok, metric_key_prefix="eval")
    metrics = {k.removeprefix("eval_"): v for k, v in prediction.metrics.items() if _is_task_metric(k)}
    main = metrics.get(task.main_metric)
    guard.check_predictions(task, prediction.predictions, main)

    history = trainer.state.log_history
    evals = [
        {"step": h["step"], "epoch": h.get("epoch"), "metric": h.get(f"eval_{task.main_metric}")}
        for h in history
        if f"eval_{task.main_metric}" in h
    ]
    # "best" only counts evaluations at the final sparsity: an early dense epoch is not a result.
    at_target = [e["metric"] for e in evals if pruner is None or (pruner.frozen_at is not None and e["step"] >= pruner.frozen_at)]
    candidates = [m for m in at_target + [main] if m is not None and math.isfinite(m)]
    steps = trainer.state.global_step
    sparsity = sparsity_report(model, target_names)
    status, reason = run_status(guard, pruner, sparsity["targeted"])
    before = pruner.sparsity_before_freeze if pruner is not None else None
    result = RunResult(
        status=status,
        reason=reason,
        metrics={k: float(v) for k, v in metrics.items()},
        best_metric=max(candidates) if candidates else None,
        main_metric=task.main_metric,
        sparsity=sparsity,
        steps=steps,
        train_examples=len(train_tok),
        wall_time_s=wall,
        train_examples_per_s=train_output.metrics.get("train_samples_per_second", 0.0),
        loss_curve=[{k: v for k, v in h.items() if k not in NOT_IN_LOSS_CURVE} for h in history if "loss" in h],
        eval_history=evals,
        plan=pruning_callback.plan,
        sparsity_before_freeze=before,
        freeze_jump=sparsity["targeted"] - before if before is not None else None,
    )
    if hasattr(model, "scalar_mix"):
        result.layer_weights = model.layer_weights()
        result.gamma = model.scalar_mix.gamma.item()
    return result


def run_status(guard: DivergenceGuard, pruner, final_sparsity: float | None = None) -> tuple[str, str | None]:
    """``diverged`` (the guard's reason), else ``off_schedule`` when the pruner's own sparsity
    trailed the schedule by more than OFF_SCHEDULE_MARGIN when its masks were fixed (the metric
    is valid, but the freeze, not the pruner, chose the final sparsity), else ``ok``.
    ``final_sparsity``: the sparsity the freeze landed on, in the unit of ``sparsity_before_freeze``
    (the share of targeted weights). A structured recipe's schedule counts heads and neurons, and
    its target is not a weight share (half the heads and three quarters of the neurons of MiniLM-L6
    are 66.7% of its encoder weights, under a 75% schedule): the freeze's own result bounds what
    the schedule can ask of it in that unit."""
    if guard.reason is not None:
        return "diverged", guard.reason
    before = getattr(pruner, "sparsity_before_freeze", None)
    if before is None or pruner.frozen_at is None:
        return "ok", None
    scheduled = pruner.schedule(pruner.frozen_at)
    if final_sparsity is not None:
        scheduled = min(scheduled, final_sparsity)
    if before < scheduled - OFF_SCHEDULE_MARGIN:
        return "off_schedule", f"sparsity {before:.1%} before the freeze, schedule {scheduled:.1%}: the freeze did the pruning"
    return "ok", None


def load_teacher(spec: DistillationSpec, student, task):
    """The teacher model, refused unless it can teach this student this task."""
    teacher, _ = load_classifier(spec.teacher, None, num_labels=None, with_tokenizer=False)
    if not any(name.endswith("ForSequenceClassification") for name in teacher.config.architectures or []):
        raise BermoPruneError(f"teacher {spec.teacher} is not a fine-tuned classifier "
                              f"(its checkpoint is a {', '.join(teacher.config.architectures or ['bare model'])})")
    if teacher.config.num_labels != task.num_labels:
        raise BermoPruneError(f"teacher {spec.teacher} has {teacher.config.num_labels} labels; "
                              f"{task.name} needs a teacher fine-tuned on it ({task.num_labels} labels)")
    if teacher.config.vocab_size != student.config.vocab_size:
        raise BermoPruneError(f"teacher {spec.teacher} uses another vocabulary ({teacher.config.vocab_size} tokens, "
                              f"the student {student.config.vocab_size})")
    if spec.hidden_weight > 0:
        shapes = [(m.config.num_hidden_layers, m.config.hidden_size) for m in (teacher, student)]
        if shapes[0] != shapes[1]:
            raise BermoPruneError(f"teacher {spec.teacher} has {shapes[0][0]} layers of width {shapes[0][1]}, the student "
                                  f"{shapes[1][0]} of width {shapes[1][1]}: distillation.hidden_weight needs equal ones")
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def last_complete_checkpoint(trainer_dir: Path) -> Path | None:
    """The newest checkpoint written to the end (None if there is none)."""
    complete = [folder for folder in Path(trainer_dir).glob("checkpoint-*") if (folder / COMPLETE_MARKER).exists()]
    return max(complete, key=lambda f: int(f.name.rsplit("-", 1)[1]), default=None)


def remove_incomplete_checkpoints(trainer_dir: Path) -> None:
    """Checkpoints a kill cut short: the resumed run writes those steps again from scratch."""
    for folder in Path(trainer_dir).glob("checkpoint-*"):
        if not (folder / COMPLETE_MARKER).exists():
            shutil.rmtree(folder, ignore_errors=True)


def _total_steps(train_dataset, training: TrainingSpec) -> int:
    return training.total_steps(len(train_dataset))


def _is_task_metric(key: str) -> bool:
    return key.startswith("eval_") and not key.endswith(("_runtime", "_per_second", "_loss")) and key != "eval_epoch"
