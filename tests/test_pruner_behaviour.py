"""What each learned pruner does on the way, not only where it ends: L0's expected sparsity
follows its schedule, soft movement's penalty prunes inside the window, the movement score
warm-up holds the masks back, and the feedback strength behaves as its docstring says."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification

from bermo_prune.errors import BermoPruneError
from bermo_prune.builtin_pruners.l0 import mean_gates, sample_gates
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


@pytest.mark.parametrize("target", [0.5, 0.9])
def test_l0_with_the_penalty_stays_on_the_schedule(target):
    """The recipe's penalty pushes the gates down harder than the schedule asks: the projection
    shifts them back up, so the penalty only orders the gates."""
    model, pruner = make("l0", target=target, penalty={"value": 1000.0, "shape": "one_shot"})
    window = pruner.schedule.end_step - pruner.schedule.start_step
    shifts = []
    seen = train(model, pruner, pruner.schedule.end_step - 1, watch=lambda step, p: shifts.append(p.last_shift))
    gaps = [abs(achieved - scheduled) for step, scheduled, achieved in seen
            if step >= pruner.schedule.start_step + 0.2 * window]
    assert max(gaps) < 0.02
    assert max(shifts) > 0  # the projection held the penalty back at some step
    before = pruner.current_sparsity()
    pruner.on_step_end(pruner.schedule.end_step)
    assert abs(pruner.current_sparsity() - before) <= 0.02


def test_l0_freeze_folds_the_mean_gates_into_the_kept_weights():
    """At the freeze each kept weight is multiplied by E[z], the mean of its gate in training (a
    kept gate must not jump to 1); E[z] is the hard-concrete mean, checked by sampling."""
    model, pruner = make("l0", target=0.5)
    with torch.no_grad():
        for p in pruner.parametrizations().values():
            p.log_alpha.uniform_(-4.0, 4.0)
    name, mask = next(iter(pruner.parametrizations().items()))
    weight = pruner.modules[name].parametrizations.weight.original
    before, log_alpha = weight.detach().clone(), mask.log_alpha.detach().clone()
    pruner.step = pruner.schedule.end_step
    pruner.freeze()
    assert pruner.current_sparsity() == 0.5
    expected = torch.where(mask.mask > 0, before * mean_gates(log_alpha), before)
    assert torch.allclose(weight.detach(), expected)
    torch.manual_seed(0)
    sampled = torch.stack([sample_gates(log_alpha) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean_gates(log_alpha), sampled, atol=0.02)


def test_l0_warns_when_no_penalty_orders_the_gates():
    _, bare = make("l0")
    _, ordered = make("l0", penalty={"value": 1000.0, "shape": "one_shot"})
    assert any("no recipe penalty" in w for w in bare.plan()["warnings"])
    assert not any("no recipe penalty" in w for w in ordered.plan()["warnings"])


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
    pruner.project(0.1)  # sparser than asked (a penalty ran ahead): shifted back up, order kept
    back = torch.cat([p.log_alpha.detach().flatten() for p in pruner.parametrizations().values()])
    assert (back - after).min() > 0 and torch.allclose(back - after, (back - after)[0].expand_as(after))
    assert pruner.expected_sparsity().item() == pytest.approx(0.105, abs=0.002)  # to within the 0.5-point tolerance


def test_l0_ascent_multipliers_remain_available():
    _, pruner = make("l0", {"constraint": "ascent"})
    assert pruner.param_groups()[1]["params"] == [pruner.lambda_1, pruner.lambda_2]
    pruner.step = pruner.schedule.start_step + 1
    assert set(pruner.loss_terms()) == {"lagrangian"}


# --- soft movement ---------------------------------------------------------------------------


def test_soft_movement_penalty_prunes_inside_the_window():
    """Random labels give the scores nothing to learn, so this checks only when the penalty acts
    and that it, not the freeze, prunes (on MiniLM-L6 the tracking of the schedule is measured in
    benchmarks/results/pruner_health)."""
    model, pruner = make("soft_movement", target=0.8, total=800)
    start, end = pruner.schedule.start_step, pruner.schedule.end_step
    lead = pruner.first_active_step()  # the penalty starts lookahead steps before the window
    assert pruner.lookahead == 44 and lead == start - 44 > 0  # ceil(2.197 / 0.05): the margin over score_lr
    lambdas = []
    seen = train(model, pruner, end - 1, lr=1e-4, watch=lambda step, p: lambdas.append(p.current_lambda()))
    assert all(weight == 0.0 for weight in lambdas[: lead - 1]) and lambdas[lead] > 0
    assert all(achieved == 0.0 for step, _, achieved in seen if step <= lead)  # masks all ones before
    inside = [achieved for step, _, achieved in seen if start < step < end]
    assert inside[0] < 0.05 and inside[-1] >= 0.75  # the penalty, not the freeze, pruned
    assert max(lambdas) > pruner.options.initial_lambda  # the feedback raised lambda while behind


def test_soft_movement_predicts_crossings_from_each_scores_fall():
    _, pruner = make("soft_movement")
    mask = next(iter(pruner.parametrizations().values()))
    threshold = mask.logit_threshold  # logit(0.1) = -2.197
    driven = 0.25  # a fall of at least 0.25 in 10 steps counts as driven by the penalty
    with torch.no_grad():
        mask.scores.zero_()
        mask.scores_then.zero_()
        flat, then = mask.scores.view(-1), mask.scores_then.view(-1)
        flat[:3] = torch.tensor([-2.5, -1.2, -1.2])  # crossed already; falling 1.0 ...
        then[:3] = torch.tensor([-2.5, -0.2, -0.8])  # ... per 10 steps; and 0.4 per 10 steps
        flat[3], then[3] = -2.0, -2.1  # rising: stays
        flat[4], then[4] = -0.5, 0.5  # falls fast from far above: counted as well
        flat[5], then[5] = -1.9, -1.8  # jitters down by 0.1, under the driven fall: never counted
    assert mask.predicted_crossings(0, driven) == 1  # the threshold sparsity itself
    assert mask.predicted_crossings(20, driven) == 3  # -1.2 - 2 * 1.0 and -0.5 - 2 * 1.0 < -2.197; -1.2 - 2 * 0.4 not
    assert mask.predicted_crossings(30, driven) == 4
    assert mask.predicted_crossings(100, driven) == 4  # -1.9 - 10 * 0.1 would cross, but jitter is not a trend
    assert int((~mask.hard_mask()).sum()) == 1 and threshold == pytest.approx(-2.1972, abs=1e-4)


def test_soft_movement_feedback_follows_the_prediction_not_the_threshold():
    """Scores on their way down raise the prediction, and lambda falls before any has crossed."""
    _, pruner = make("soft_movement", target=0.5, total=600)
    first = pruner.first_active_step()
    initial = pruner.strength.value
    pruner.on_step_end(first + 10)  # Adam's first steps are not measured: a snapshot only
    assert pruner.predicted_sparsity is None and pruner.strength.value == initial
    with torch.no_grad():
        for p in pruner.parametrizations().values():
            p.scores.fill_(-1.2)  # every score fell by 1.2 in 10 steps: all cross within 9 more
    pruner.on_step_end(first + 20)
    assert pruner.current_sparsity() == 0.0 and pruner.predicted_sparsity == 1.0
    lowered = pruner.strength.value
    assert lowered < initial
    pruner.on_step_end(first + 30)  # no score moved since: nothing predicted, lambda rises again
    assert pruner.predicted_sparsity == 0.0 and pruner.strength.value > lowered
    assert pruner.current_sparsity() == 0.0


def test_soft_movement_penalty_pauses_while_the_sparsity_runs_ahead_of_the_schedule():
    """Crossings are for good, so a lead over the schedule is only undone by waiting: the penalty
    stops (and lambda falls) until the schedule has caught up."""
    _, pruner = make("soft_movement", target=0.5, total=600)
    first = pruner.first_active_step()
    assert first + 20 < pruner.schedule.start_step  # the schedule still asks for 0 there
    pruner.on_step_end(first + 10)
    before = pruner.strength.value
    params = list(pruner.parametrizations().values())
    with torch.no_grad():
        for p in params:
            p.scores.view(-1)[::2] = -3.0  # half of the weights crossed
    pruner.on_step_end(first + 20)
    assert pruner.current_sparsity() == pytest.approx(0.5, abs=0.01)
    assert pruner.paused and pruner.current_lambda() == 0.0 and pruner.loss_terms() == {}
    assert pruner.strength.value < before
    with torch.no_grad():
        for p in params:
            p.scores.zero_()  # back above the threshold: no lead, the penalty acts again
    pruner.on_step_end(first + 30)
    assert not pruner.paused and pruner.current_lambda() > 0 and "penalty" in pruner.loss_terms()


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


def test_soft_movement_warns_when_its_scores_start_inside_the_lr_warmup():
    # 200 steps, LR warm-up to step 20 (the default 10%); the scores start 9 steps before the window.
    early = {"score_lr": 0.25}  # lookahead: margin 2.2 / score_lr 0.25 -> 9 steps
    _, inside = make("soft_movement", early, total=200, schedule={"shape": "cubic", "start": 0.1, "end": 0.7})
    _, after = make("soft_movement", early, total=200, schedule={"shape": "cubic", "start": 0.25, "end": 0.7})
    assert inside.first_active_step() < 20 <= after.first_active_step()
    assert any("inside the learning-rate warm-up" in w for w in inside.plan()["warnings"])
    assert not any("warm-up" in w for w in after.plan()["warnings"])


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
