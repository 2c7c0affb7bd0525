"""What each learned pruner does on the way, not only where it ends: L0's expected sparsity
follows its schedule, soft movement's penalty prunes inside the window, the movement score
warm-up holds the masks back, and the feedback strength behaves as its docstring says."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification

from bermo_prune.errors import BermoPruneError
from bermo_prune.pruning.feedback import FeedbackStrength
from bermo_prune.pruning.registry import get_pruner_class
from bermo_prune.recipes import Recipe

from conftest import tiny_config


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_config(num_labels=2))


def batch(seed: int, size: int = 8, length: int = 12) -> dict[str, torch.Tensor]:
    """Random tokens and random labels: the task holds no weight in, the pruner must prune."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 3000, (size, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (size,), generator=g)}


def make(pruner: str, options: dict | None = None, target: float = 0.8, total: int = 200, **fields):
    raw = {"name": "behaviour", "pruner": {"name": pruner, "options": options or {}}, "target_sparsity": target,
           "schedule": {"shape": "cubic", "start": 0.1, "end": 0.7, "update_every": 1}, **fields}
    model = tiny_bert()
    p = get_pruner_class(pruner)(Recipe.model_validate(raw))
    p.attach(model, total)
    return model, p


def train(model, pruner, steps: int, lr: float = 1e-4, watch=None) -> list[tuple[int, float, float]]:
    """The Trainer's loop by hand; returns (step, scheduled, achieved sparsity) after each step."""
    extra = pruner.param_groups()
    own = {id(p) for group in extra for p in group["params"]}
    base = [p for p in model.parameters() if id(p) not in own]  # scores and gates live in the model too
    optimizer = torch.optim.AdamW([{"params": base}, *extra], lr=lr, weight_decay=0.0)
    model.train()
    seen = []
    for step in range(1, steps + 1):
        loss = model(**batch(step)).loss + sum(pruner.loss_terms().values(), torch.zeros(()))
        optimizer.zero_grad()
        loss.backward()
        pruner.before_optimizer_step()
        optimizer.step()
        pruner.on_step_end(step)
        seen.append((step, pruner.schedule(step), pruner.current_sparsity()))
        if watch is not None:
            watch(step, pruner)
    return seen


# --- L0 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.5, 0.9])
def test_l0_expected_sparsity_follows_a_cubic_schedule(target):
    model, pruner = make("l0", target=target)
    window = pruner.schedule.end_step - pruner.schedule.start_step
    seen = train(model, pruner, pruner.schedule.end_step - 1)
    tracked = [(step, abs(achieved - scheduled)) for step, scheduled, achieved in seen
               if step >= pruner.schedule.start_step + 0.2 * window]
    assert max(gap for _, gap in tracked) < 0.02, tracked
    before = pruner.current_sparsity()
    pruner.on_step_end(pruner.schedule.end_step)
    assert pruner.frozen and abs(pruner.current_sparsity() - before) <= 0.02  # the freeze does not do the pruning


def test_l0_constraint_is_off_before_the_window():
    model, pruner = make("l0")
    gates = [p.log_alpha for p in pruner.parametrizations().values()]
    train(model, pruner, pruner.schedule.start_step - 1)
    assert pruner.last_shift == 0.0  # no projection before the window
    pruner.on_step_end(pruner.schedule.start_step + 5)
    assert pruner.last_shift < 0 and pruner.current_sparsity() == pytest.approx(pruner.schedule(pruner.step), abs=0.005)
    assert pruner.loss_terms() == {}  # the projection adds no loss term
    assert len(pruner.param_groups()) == 1 and pruner.param_groups()[0]["params"] == gates  # nor multipliers


def test_l0_projection_keeps_the_order_of_the_gates():
    _, pruner = make("l0")
    with torch.no_grad():
        for p in pruner.parametrizations().values():
            p.log_alpha.normal_(1.0, 2.0)
    before = torch.cat([p.log_alpha.detach().flatten() for p in pruner.parametrizations().values()]).clone()
    pruner.project(0.6)
    after = torch.cat([p.log_alpha.detach().flatten() for p in pruner.parametrizations().values()])
    shift = after - before
    assert torch.allclose(shift, shift[0].expand_as(shift)) and shift[0] < 0
    assert pruner.expected_sparsity().item() == pytest.approx(0.6, abs=0.005)
    pruner.project(0.1)  # already sparser than asked: no shift back
    assert torch.equal(torch.cat([p.log_alpha.detach().flatten() for p in pruner.parametrizations().values()]), after)


def test_l0_ascent_multipliers_remain_available():
    _, pruner = make("l0", {"constraint": "ascent"})
    assert pruner.param_groups()[1]["params"] == [pruner.lambda_1, pruner.lambda_2]
    pruner.step = pruner.schedule.start_step + 1
    assert set(pruner.loss_terms()) == {"lagrangian"}


# --- soft movement ---------------------------------------------------------------------------


def test_soft_movement_penalty_prunes_inside_the_window():
    """Random labels give the scores nothing to learn, so this checks only that the penalty prunes
    inside the window (on MiniLM-L6 its tracking of the schedule is measured in
    benchmarks/results/pruner_health)."""
    model, pruner = make("soft_movement", {"score_lr": 0.01}, target=0.8)
    start, end = pruner.schedule.start_step, pruner.schedule.end_step
    lambdas = []
    seen = train(model, pruner, end - 1, lr=1e-4, watch=lambda step, p: lambdas.append(p.current_lambda()))
    assert all(achieved == 0.0 for step, _, achieved in seen if step <= start)  # masks all ones before
    assert all(weight == 0.0 for weight in lambdas[: start - 1])  # and no penalty
    inside = [achieved for step, _, achieved in seen if start < step < end]
    assert inside[0] < 0.05 and inside[-1] >= 0.75  # the penalty, not the freeze, pruned
    assert max(lambdas) > pruner.options.initial_lambda  # the feedback raised lambda while behind


def test_soft_movement_without_penalty_does_not_prune():
    """Without the penalty only the task moves the scores: a few cross the threshold (that is soft
    movement's own pruning), far fewer than the penalty prunes in the same steps."""
    model, pruner = make("soft_movement", {"strength": "schedule"}, penalty={"value": 0.0})
    seen = train(model, pruner, pruner.schedule.end_step - 1)
    assert all(achieved == 0.0 for step, _, achieved in seen if step <= pruner.schedule.start_step)
    assert max(achieved for _, _, achieved in seen) < 0.25
    assert pruner.loss_terms() == {}


def test_soft_movement_refuses_a_penalty_it_would_ignore():
    with pytest.raises(BermoPruneError, match="strength"):
        make("soft_movement", penalty={"value": 1.0})
    with pytest.raises(BermoPruneError, match="needs a recipe penalty"):
        make("soft_movement", {"strength": "schedule"})


def test_soft_movement_strength_survives_a_resume():
    model, pruner = make("soft_movement")
    train(model, pruner, pruner.schedule.start_step + 5)
    state = pruner.state_dict()
    _, again = make("soft_movement")
    again.load_state_dict(state)
    assert again.strength.value == pytest.approx(pruner.strength.value)
    assert all(p.learning for p in again.parametrizations().values())  # inside the window: scores learn


# --- movement --------------------------------------------------------------------------------


@pytest.mark.parametrize("scores", ["accumulated", "learned"])
def test_movement_score_warmup_keeps_masks_all_ones_until_it_ends(scores):
    model, pruner = make("movement", {"scores": scores, "score_warmup": 0.4}, total=100)
    assert pruner.schedule.start_step == 40 and pruner.schedule.end_step == 70  # the window's end is kept
    assert pruner.plan()["score_steps"] == 40

    def masks_until_warmup_ends(step, p):
        sparsity = p.current_sparsity()
        if step <= 40:
            assert sparsity == 0.0, step
    train(model, pruner, 69, watch=masks_until_warmup_ends)
    assert pruner.current_sparsity() > 0.5
    assert any(float(s.abs().sum()) > 0 for s in pruner.scores().values())  # the scores learned meanwhile


def test_movement_score_warmup_in_steps_and_the_plan_warns_when_short():
    _, pruner = make("movement", {"score_warmup": 30}, total=100)
    assert pruner.schedule.start_step == 30
    plan = pruner.plan()
    assert plan["window_steps"] == 40 and plan["warnings"] and "30 optimizer steps" in plan["warnings"][0]
    with pytest.raises(Exception, match="whole number"):
        make("movement", {"score_warmup": 2.5})


# --- the feedback strength -------------------------------------------------------------------


def test_feedback_strength_grows_while_behind_and_shrinks_while_ahead():
    strength = FeedbackStrength(10.0, gain=2.0, min_value=1e-3, max_value=1e3)
    strength.update(target=0.5, achieved=0.4)
    assert strength.value == pytest.approx(10.0 * torch.e ** 0.2)
    strength.update(target=0.5, achieved=0.6)
    assert strength.value == pytest.approx(10.0)
    for _ in range(100):
        strength.update(target=1.0, achieved=0.0)
    assert strength.value == pytest.approx(1e3)  # clamped
    saved = strength.state_dict()
    other = FeedbackStrength(1.0, gain=2.0, min_value=1e-3, max_value=1e3)
    other.load_state_dict(saved)
    assert other.value == pytest.approx(1e3)
