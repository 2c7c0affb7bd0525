"""Pruner life cycle on tiny models: exact sparsity, schedules, movement scores, hard-concrete
gates, finalised checkpoints and third-party pruners."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

import bermo_prune  # noqa: F401  (registers BERMo with the Auto classes)
from bermo_prune.errors import BermoPruneError
from bermo_prune.models import BermoConfig, BermoForSequenceClassification
from bermo_prune.pruning import registry
from bermo_prune.pruning.base import Pruner
from bermo_prune.pruning.masks import select_modules
from bermo_prune.pruning.registry import available_pruners, get_pruner_class, register_pruner
from bermo_prune.recipes import DEFAULT_INCLUDE, Recipe
from bermo_prune.builtin_pruners import l0

from conftest import tiny_config

TOTAL_STEPS = 20


TARGET = 0.7  # 0.7 * 16384 = 11468.8 and 0.7 * 1024 = 716.8: rounding matters


def recipe(pruner: str, options: dict | None = None, **fields) -> Recipe:
    raw = {
        "name": f"test-{pruner}",
        "pruner": {"name": pruner, "options": options or {}},
        "target_sparsity": TARGET,
        "schedule": {"shape": "cubic", "start": 0.1, "end": 0.6, "update_every": 2},
    }
    if pruner == "soft_movement" and (options or {}).get("strength") == "schedule":
        raw["penalty"] = {"value": 1.0}
    raw.update(fields)
    return Recipe.model_validate(raw)


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_config(num_labels=2))


def tiny_bermo(seed: int = 0) -> BermoForSequenceClassification:
    torch.manual_seed(seed)
    return BermoForSequenceClassification(BermoConfig.from_bert_config(tiny_config(), num_labels=2))


def inputs(size: int = 8, length: int = 12, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, 3000, (size, length), generator=g)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.randint(0, 2, (size,), generator=g),
    }


def train(model: nn.Module, pruner: Pruner, steps: int = TOTAL_STEPS, lr: float = 1e-3) -> None:
    """The loop the Trainer runs, by hand: penalty, backward, hook, step, step-end."""
    extra = pruner.param_groups()
    own = {id(p) for group in extra for p in group["params"]}
    base = [p for p in model.parameters() if id(p) not in own]  # gates/scores are in the model too
    optimizer = torch.optim.AdamW([{"params": base}, *extra], lr=lr, weight_decay=0.0)
    model.train()
    for step in range(1, steps + 1):
        loss = model(**inputs(seed=step)).loss
        extra_loss = pruner.penalty()
        if extra_loss is not None:
            loss = loss + extra_loss
        optimizer.zero_grad()
        loss.backward()
        pruner.before_optimizer_step()
        optimizer.step()
        pruner.on_step_end(step)


def zero_positions(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: (p.detach() == 0).clone() for name, p in model.named_parameters()}


def targeted_weight_names(model: nn.Module, include=(DEFAULT_INCLUDE,)) -> list[str]:
    return [f"{name}.weight" for name in select_modules(model, include)]


def expected_zeros(numel: int, sparsity: float) -> int:
    return int(round(sparsity * numel))


CASES = {
    "magnitude": ("magnitude", None),
    "random": ("random", None),
    "movement": ("movement", None),
    "movement-learned": ("movement", {"scores": "learned"}),
    "soft_movement": ("soft_movement", None),
    "l0": ("l0", None),
    "platon": ("platon", None),
    "obert": ("obert", {"num_grads": 2, "block_size": 8}),
    "l0-block-2x4": ("l0", {"block": [2, 4]}),
    "l0-block-3x5": ("l0", {"block": [3, 5]}),  # blocks overhang the 32/64-wide weights
}


# --- the life cycle --------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "per_layer"])
@pytest.mark.parametrize("case", list(CASES))
def test_prunes_to_exact_target_and_leaves_a_plain_model(case, scope):
    name, options = CASES[case]
    model = tiny_bert()
    before = zero_positions(model)
    targeted = targeted_weight_names(model)
    assert len(targeted) == 12  # 6 Linear layers per block, 2 blocks

    pruner = get_pruner_class(name)(recipe(name, options, scope=scope))
    pruner.attach(model, TOTAL_STEPS)
    assert len(pruner.modules) == 12
    assert all(parametrize.is_parametrized(m, "weight") for m in pruner.modules.values())
    if options and "block" in options:
        rows, cols = options["block"]
        query = pruner.modules["bert.encoder.layer.0.attention.self.query"]  # 32 x 32
        assert tuple(query.parametrizations.weight[0].log_alpha.shape) == (math.ceil(32 / rows), math.ceil(32 / cols))

    train(model, pruner)
    assert pruner.frozen and pruner.frozen_at is not None and pruner.frozen_at <= TOTAL_STEPS
    pruner.finalize()

    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert not any("parametrizations" in n for n, _ in model.named_parameters())
    params = dict(model.named_parameters())
    assert set(params) == set(before)  # the same plain parameters as before pruning

    weights = {n: params[n].detach() for n in targeted}
    if scope == "global":
        total = sum(w.numel() for w in weights.values())
        zeros = sum(int((w == 0).sum()) for w in weights.values())
        assert zeros == expected_zeros(total, TARGET)
    else:
        for n, w in weights.items():
            assert int((w == 0).sum()) == expected_zeros(w.numel(), TARGET), n

    for n, p in params.items():
        if n in weights:
            continue
        new_zeros = (p.detach() == 0) & ~before[n]
        assert not new_zeros.any(), f"{n} gained zeros"
    assert torch.isfinite(model(**inputs()).logits).all()


def test_magnitude_one_shot_prunes_the_smallest_weights_globally():
    model = tiny_bert()
    r = recipe("magnitude", schedule={"shape": "one_shot", "start": 0.0, "end": 0.0})
    pruner = get_pruner_class("magnitude")(r)
    pruner.attach(model, TOTAL_STEPS)  # a one-shot schedule at step 0 prunes on attach
    magnitudes = torch.cat([m.parametrizations.weight.original.detach().abs().flatten() for m in pruner.modules.values()])
    masks = torch.cat([p.mask.flatten() for p in pruner.parametrizations().values()])
    assert int((masks == 0).sum()) == expected_zeros(masks.numel(), TARGET)
    assert magnitudes[masks == 0].max() <= magnitudes[masks == 1].min()
    # the forward pass sees the masked weight, the original stays underneath
    module = pruner.modules["bert.encoder.layer.1.output.dense"]
    mask = module.parametrizations.weight[0].mask
    assert torch.equal(module.weight, module.parametrizations.weight.original * mask)


def test_one_shot_magnitude_recipe_gives_torch_prune_global_unstructured_masks():
    """The pruning-quality benchmark's anchor is torch.nn.utils.prune: the bundled one-shot recipe
    must choose the very masks of prune.global_unstructured (L1) on the same weights."""
    from torch.nn.utils import prune as torch_prune

    from bermo_prune.recipes import load_recipe

    r = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "sst2-one-shot-magnitude.yaml")
    r = r.model_copy(update={"target_sparsity": TARGET})
    ours, theirs = tiny_bert(), tiny_bert()
    pruner = get_pruner_class(r.pruner.name)(r)
    pruner.attach(ours, TOTAL_STEPS)  # one-shot at step 0: pruned on attach, fixed from then on
    modules = select_modules(theirs, [DEFAULT_INCLUDE])
    torch_prune.global_unstructured([(m, "weight") for m in modules.values()], torch_prune.L1Unstructured, amount=TARGET)
    for name, p in pruner.parametrizations().items():
        assert torch.equal(p.mask, modules[name].weight_mask), name
    pruner.on_step_end(1)
    assert pruner.frozen  # masks fixed for the whole run


# --- the schedule ----------------------------------------------------------------------------


def test_magnitude_follows_a_linear_schedule():
    r = recipe("magnitude", schedule={"shape": "linear", "start": 0.2, "end": 0.8, "update_every": 2})
    model = tiny_bert()
    pruner = get_pruner_class("magnitude")(r)
    pruner.attach(model, TOTAL_STEPS)
    schedule = pruner.schedule
    assert (schedule.start_step, schedule.end_step) == (4, 16)
    total = sum(p.mask.numel() for p in pruner.parametrizations().values())

    def at(s: float) -> float:
        return expected_zeros(total, s) / total

    seen = {}
    for step in range(1, TOTAL_STEPS + 1):
        pruner.on_step_end(step)
        seen[step] = pruner.current_sparsity()

    assert seen[1] == seen[3] == 0.0  # dense warm-up
    assert seen[4] == 0.0  # the window opens at the initial sparsity
    for step in (6, 8, 10, 12, 14):  # update steps inside the window
        assert schedule(step) == pytest.approx(TARGET * (step - 4) / 12)
        assert seen[step] == at(schedule(step)), step
        assert seen[step + 1] == seen[step]  # no update between update steps
    assert 0 < seen[6] < seen[8] < seen[10] < seen[12] < seen[14] < TARGET
    assert pruner.frozen and pruner.frozen_at == 16
    assert seen[16] == seen[20] == at(TARGET)


# --- random masks (the control) --------------------------------------------------------------


def random_masks(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # as runs._train seeds torch before loading the model
    model = BertForSequenceClassification(tiny_config(num_labels=2))
    pruner = get_pruner_class("random")(recipe("random"))
    pruner.attach(model, TOTAL_STEPS)
    pruner.finalize()
    return {name: (m.weight.detach() != 0) for name, m in pruner.modules.items()}


def test_random_masks_hit_the_target_and_depend_on_the_seed_only():
    a, again, other = random_masks(0), random_masks(0), random_masks(1)
    total = sum(m.numel() for m in a.values())
    assert sum(int((~m).sum()) for m in a.values()) == expected_zeros(total, TARGET)
    assert all(torch.equal(a[n], again[n]) for n in a)
    assert any(not torch.equal(a[n], other[n]) for n in a)


def test_random_scores_leave_the_global_rng_alone_and_survive_in_the_state_dict():
    torch.manual_seed(0)
    model = tiny_bert()
    state = torch.get_rng_state()
    pruner = get_pruner_class("random")(recipe("random"))
    pruner.attach(model, TOTAL_STEPS)
    assert torch.equal(torch.get_rng_state(), state)
    scores = torch.cat([s.flatten() for s in pruner.scores().values()])
    assert torch.equal(scores.sort().values, torch.arange(scores.numel(), dtype=scores.dtype))  # a ranking: no ties
    saved = {k: v for k, v in model.state_dict().items() if k.endswith("parametrizations.weight.0.scores")}
    assert len(saved) == 12  # checkpoints, hence --resume, carry the ranking


def test_random_masks_are_nested_along_the_schedule():
    model = tiny_bert()
    pruner = get_pruner_class("random")(recipe("random", schedule={"shape": "linear", "start": 0.1, "end": 0.8, "update_every": 1}))
    pruner.attach(model, TOTAL_STEPS)
    kept = []
    for step in range(1, TOTAL_STEPS + 1):
        pruner.on_step_end(step)
        kept.append(torch.cat([p.mask.flatten() for p in pruner.parametrizations().values()]).bool())
    sparsities = [1 - float(k.float().mean()) for k in kept]
    assert sparsities == sorted(sparsities) and sparsities[0] == 0.0 and len(set(sparsities)) > 5
    assert sparsities[-1] == expected_zeros(kept[-1].numel(), TARGET) / kept[-1].numel()
    for before, after in zip(kept, kept[1:]):
        assert not (after & ~before).any()  # a weight once pruned stays pruned


# --- movement scores -------------------------------------------------------------------------


def test_movement_scores_are_minus_grad_times_weight():
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    weight = torch.tensor([[0.5, -1.0, 2.0], [1.5, -0.5, 0.25]])
    with torch.no_grad():
        model[0].weight.copy_(weight)
    r = recipe("movement", targets={"include": [r"^0$"]})
    pruner = get_pruner_class("movement")(r)
    pruner.attach(model, 10)
    assert list(pruner.modules) == ["0"]
    p = pruner.parametrizations()["0"]
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    with torch.no_grad():
        p.mask.copy_(mask)

    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 3.0]])
    upstream = torch.tensor([[1.0, -2.0], [0.5, 3.0]])  # dL/d(output)
    out = model(x)
    assert torch.equal(out, x @ (weight * mask).T)
    (out * upstream).sum().backward()

    grad_masked_weight = upstream.T @ x  # dL/dW' for W' = W * M
    expected = -grad_masked_weight * weight
    assert (grad_masked_weight * (1 - mask)).abs().sum() > 0  # masked entries do get a signal
    assert torch.equal(p.scores, expected)  # masked and unmasked alike (straight-through)
    original = model[0].parametrizations.weight.original
    assert torch.equal(original.grad, grad_masked_weight * mask)
    assert torch.all(original.grad[mask == 0] == 0)

    model(x).mul(upstream).sum().backward()  # scores accumulate over backward passes
    assert torch.equal(p.scores, 2 * expected)

    with torch.no_grad():  # no accumulation without autograd
        model(x)
    assert torch.equal(p.scores, 2 * expected)


def test_platon_statistics_match_a_hand_computation_over_three_steps():
    """I = |W' * dL/dW'| (0 where masked), I_bar <- b1 I_bar + (1 - b1) I, U_bar <- b2 U_bar +
    (1 - b2) |I - I_bar| with the new I_bar; score I_bar * U_bar. Computed here by hand from the
    weights and gradients of three optimizer steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    r = recipe("platon", {"beta1": 0.8, "beta2": 0.9}, targets={"include": [r"^0$"]})
    pruner = get_pruner_class("platon")(r)
    pruner.attach(model, 100)  # the window opens at step 10: the three steps keep the mask set here
    p = pruner.parametrizations()["0"]
    mask = torch.ones(3, 4)
    mask[1, 2] = mask[0, 0] = 0
    with torch.no_grad():
        p.mask.copy_(mask)
    original = model[0].parametrizations.weight.original
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    importance, uncertainty = torch.zeros(3, 4), torch.zeros(3, 4)
    for step in range(1, 4):
        x = torch.randn(5, 4)
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        weight, grad = original.detach().clone(), original.grad.clone()
        sensitivity = (weight * mask * grad).abs()
        importance = 0.8 * importance + 0.2 * sensitivity
        uncertainty = 0.9 * uncertainty + 0.1 * (sensitivity - importance).abs()
        pruner.before_optimizer_step()
        optimizer.step()
        pruner.on_step_end(step)
        assert torch.allclose(p.importance, importance, atol=1e-7, rtol=1e-6)
        assert torch.allclose(p.uncertainty, uncertainty, atol=1e-7, rtol=1e-6)
        assert torch.equal(p.mask, mask)
    assert torch.all(p.importance[mask == 0] == 0)  # a masked weight has no sensitivity
    assert (p.uncertainty > 0).sum() == 10
    assert torch.allclose(pruner.scores()["0"], importance * uncertainty, atol=1e-9, rtol=1e-6)


def test_platon_statistics_stop_at_the_freeze():
    model = tiny_bert()
    pruner = get_pruner_class("platon")(recipe("platon"))
    pruner.attach(model, TOTAL_STEPS)
    train(model, pruner)
    assert pruner.frozen
    frozen = {name: p.importance.clone() for name, p in pruner.parametrizations().items()}
    model(**inputs()).loss.backward()
    pruner.before_optimizer_step()
    assert all(torch.equal(p.importance, frozen[name]) for name, p in pruner.parametrizations().items())


def obert_with_gradients(block_size: int, grads: list[torch.Tensor], weight: torch.Tensor, damp: float = 0.1):
    """An oBERT pruner on a one-Linear model whose Fisher was fed ``grads`` (by hand, as the
    optimizer steps before a pruning step would), and the dense block inverses to compare with."""
    model = nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        model[0].weight.copy_(weight)
    r = recipe("obert", {"num_grads": len(grads), "block_size": block_size, "damp": damp}, targets={"include": [r"^0$"]})
    pruner = get_pruner_class("obert")(r)
    pruner.attach(model, 100)  # pruning steps 10, 12, ..., 60: the grads fed are those of steps 9 and 10
    original = model[0].parametrizations.weight.original
    pruner.step = 10 - len(grads)
    for g in grads:
        original.grad = g.clone()
        pruner.before_optimizer_step()
        pruner.step += 1
    flat = torch.stack([F.pad(g.reshape(-1), (0, -g.numel() % block_size)) for g in grads]).double()
    blocks = flat.view(len(grads), -1, block_size).transpose(0, 1)  # (blocks, m, B)
    fisher = damp * torch.eye(block_size, dtype=torch.float64) + blocks.transpose(1, 2) @ blocks / len(grads)
    return pruner, model, torch.linalg.inv(fisher)


def test_obert_fisher_inverse_saliency_and_update_match_dense_formulas():
    torch.manual_seed(0)
    weight = torch.randn(3, 5)  # 15 weights in blocks of 4: the last block is padded
    grads = [torch.randn(3, 5) for _ in range(6)]
    pruner, model, dense_inverse = obert_with_gradients(4, grads, weight)
    p = pruner.parametrizations()["0"]
    assert p.inverse.shape == (4, 4, 4)
    assert torch.allclose(p.inverse.double(), dense_inverse, rtol=1e-4, atol=1e-4)

    diagonal = dense_inverse.diagonal(dim1=1, dim2=2).reshape(-1)[:15].view(3, 5)
    assert torch.allclose(pruner.scores()["0"].double(), weight.double() ** 2 / (2 * diagonal), rtol=1e-4)

    # prune weight (1, 2) alone: flat index 7, the last entry of block 1
    i, block, at = 7, 1, 3
    pruned = torch.zeros(3, 5, dtype=torch.bool)
    pruned[1, 2] = True
    change = p.update_for(weight, pruned).double().reshape(-1)
    expected = torch.zeros(16, dtype=torch.float64)
    expected[4:8] = -dense_inverse[block][:, at] * weight.reshape(-1)[i] / dense_inverse[block][at, at]
    assert torch.allclose(change, expected[:15], rtol=1e-4, atol=1e-6)
    assert change[i].item() == pytest.approx(-weight.reshape(-1)[i].item(), rel=1e-4)  # the pruned weight goes to 0

    new_mask = (~pruned).float()
    pruner.set_masks({"0": new_mask})
    after = model[0].parametrizations.weight.original.detach()
    kept = ~pruned
    assert torch.allclose(after[kept].double(), weight[kept].double() + change.view(3, 5)[kept], rtol=1e-5, atol=1e-6)
    assert torch.equal(p.mask, new_mask) and p.inverse is None  # the next pruning step collects afresh


def test_obert_update_loses_less_than_zeroing_on_the_quadratic_model():
    """With the loss modelled as 0.5 dw^T F dw around the weights, removing a weight with the
    optimal update of the others costs w^2 / (2 [F^-1]_ii), which is less than zeroing it alone
    (w^2 F_ii / 2) whenever its block's Fisher is not diagonal."""
    torch.manual_seed(1)
    weight = torch.randn(2, 4)
    shared = torch.randn(2, 4)
    grads = [shared * torch.randn(()) + 0.3 * torch.randn(2, 4) for _ in range(8)]  # correlated gradients
    pruner, _, dense_inverse = obert_with_gradients(8, grads, weight)
    fisher = torch.linalg.inv(dense_inverse[0])
    p = pruner.parametrizations()["0"]
    w = weight.reshape(-1).double()
    for i in range(8):
        pruned = torch.zeros(8, dtype=torch.bool)
        pruned[i] = True
        with_update = p.update_for(weight, pruned.view(2, 4)).reshape(-1).double()
        zeroing = torch.zeros(8, dtype=torch.float64)
        zeroing[i] = -w[i]
        loss_update = 0.5 * with_update @ fisher @ with_update
        loss_zeroing = 0.5 * zeroing @ fisher @ zeroing
        assert loss_update < loss_zeroing
        assert loss_update.item() == pytest.approx((w[i] ** 2 / (2 * dense_inverse[0][i, i])).item(), rel=1e-3)


def test_obert_collects_only_before_pruning_steps_and_refuses_what_would_not_fit(monkeypatch):
    model = tiny_bert()
    r = recipe("obert", {"num_grads": 3, "block_size": 8},
               schedule={"shape": "cubic", "start": 0.2, "end": 0.6, "update_every": 5})
    pruner = get_pruner_class("obert")(r)
    pruner.attach(model, 50)  # window 10-30, pruning steps 10, 15, 20, 25, 30
    assert pruner.pruning_steps() == [10, 15, 20, 25, 30]
    assert [s for s in range(1, 51) if pruner.collecting(s)] == [8, 9, 10, 13, 14, 15, 18, 19, 20, 23, 24, 25, 28, 29, 30]
    assert pruner.plan()["warnings"] == []
    short = get_pruner_class("obert")(recipe("obert", {"num_grads": 8}, schedule={"shape": "cubic", "start": 0.2, "end": 0.6, "update_every": 5}))
    short.set_total_steps(50)
    assert "fewer than num_grads 8" in short.plan()["warnings"][0]

    from bermo_prune.builtin_pruners import obert
    monkeypatch.setattr(obert, "free_memory_bytes", lambda device: 10_000)
    with pytest.raises(BermoPruneError, match=r"obert: the block Fisher inverses need .* GB"):
        get_pruner_class("obert")(r).attach(tiny_bert(), 50)

    # The Trainer attaches on the CPU and then moves model and pruner: the device moved to counts.
    asked = []
    monkeypatch.setattr(obert, "free_memory_bytes", lambda device: asked.append(device.type) or 10 ** 12)
    moved = get_pruner_class("obert")(r)
    moved.attach(tiny_bert(), 50)
    monkeypatch.setattr(obert, "free_memory_bytes", lambda device: asked.append(device.type) or 10_000)
    with pytest.raises(BermoPruneError, match=r"obert: the block Fisher inverses need .* GB .* meta memory"):
        moved.to("meta")
    assert asked == ["cpu", "meta"]


def test_learned_movement_scores_get_minus_the_movement_as_gradient():
    """scores: learned -> S is a parameter whose gradient is dL/dW' * W (so the optimizer's
    descent moves it by -dL/dW' * W, as the accumulated scores), and W' = W * M exactly."""
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    weight = torch.tensor([[0.5, -1.0, 2.0], [1.5, -0.5, 0.25]])
    with torch.no_grad():
        model[0].weight.copy_(weight)
    pruner = get_pruner_class("movement")(recipe("movement", {"scores": "learned"}, targets={"include": [r"^0$"]}))
    pruner.attach(model, 10)
    p = pruner.parametrizations()["0"]
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    with torch.no_grad():
        p.mask.copy_(mask)
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 3.0]])
    upstream = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    out = model(x)
    assert torch.equal(out, x @ (weight * mask).T)
    (out * upstream).sum().backward()
    grad_masked_weight = upstream.T @ x
    assert torch.allclose(p.scores.grad, grad_masked_weight * weight)
    assert torch.equal(model[0].parametrizations.weight.original.grad, grad_masked_weight * mask)
    assert [g["lr"] for g in pruner.param_groups()] == [1e-2]
    pruner.freeze()
    assert p.fixed and not p.scores.requires_grad


def test_movement_update_keeps_the_top_scores():
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    r = recipe("movement", targets={"include": [r"^0$"]}, target_sparsity=0.5)
    pruner = get_pruner_class("movement")(r)
    pruner.attach(model, 10)
    p = pruner.parametrizations()["0"]
    with torch.no_grad():
        p.scores.copy_(torch.tensor([[5.0, -1.0, 3.0, 0.0], [-2.0, 4.0, 1.0, -3.0]]))
    pruner.update(0.5)
    assert torch.equal(p.mask, torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]]))



@pytest.mark.parametrize("regrow", [True, False])
def test_movement_regrow_decides_whether_a_pruned_weight_comes_back(regrow):
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    r = recipe("movement", {"regrow": regrow}, targets={"include": [r"^0$"]}, target_sparsity=0.5)
    pruner = get_pruner_class("movement")(r)
    pruner.attach(model, 10)
    p = pruner.parametrizations()["0"]
    with torch.no_grad():
        p.scores.copy_(torch.tensor([[5.0, -1.0, 3.0, 0.0], [-2.0, 4.0, 1.0, -3.0]]))
    pruner.update(0.25)  # prunes -3 and -2
    assert torch.equal(p.mask, torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]]))
    with torch.no_grad():
        p.scores[1, 0] = 9.0  # the pruned -2 now moves away from zero fastest
    pruner.update(0.5)
    if regrow:  # the paper's top-k: it is back, and 1 goes with -3, -1 and 0
        assert torch.equal(p.mask, torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]))
    else:  # nested: what was pruned stays pruned, and the two lowest kept scores (-1, 0) join it
        assert torch.equal(p.mask, torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]]))
    pruner.freeze()
    assert int((p.mask == 0).sum()) == 4


# --- hard-concrete gates ---------------------------------------------------------------------


def test_expected_open_matches_the_formula():
    log_alpha = torch.tensor([-4.0, -1.0, 0.0, 0.5, 2.0, 6.0])
    beta, gamma, zeta = 2.0 / 3.0, -0.1, 1.1
    by_hand = torch.tensor([1.0 / (1.0 + math.exp(-(a - beta * math.log(-gamma / zeta)))) for a in log_alpha.tolist()])
    assert torch.allclose(l0.expected_open(log_alpha), by_hand, atol=1e-6)
    assert (l0.BETA, l0.GAMMA, l0.ZETA) == (beta, gamma, zeta)


def test_sampled_gates_are_clamped_to_unit_interval():
    torch.manual_seed(0)
    log_alpha = torch.cat([torch.full((500,), -20.0), torch.full((500,), 20.0), 2 * torch.randn(2000)])
    gates = l0.sample_gates(log_alpha)
    assert gates.min() >= 0 and gates.max() <= 1
    assert torch.all(gates[:500] == 0)
    assert torch.all(gates[500:1000] == 1)
    middle = gates[1000:]
    assert (middle == 0).any() and (middle == 1).any()
    assert ((middle > 0) & (middle < 1)).any()
    det = l0.deterministic_gates(log_alpha)
    assert det.min() >= 0 and det.max() <= 1
    assert torch.all(det[:500] == 0) and torch.all(det[500:1000] == 1)


@pytest.mark.parametrize("block", [[1, 1], [2, 4], [3, 5]])
def test_l0_expected_sparsity(block):
    model = tiny_bert()
    pruner = get_pruner_class("l0")(recipe("l0", {"block": block}))
    pruner.attach(model, TOTAL_STEPS)
    c = 0.7
    with torch.no_grad():
        for p in pruner.parametrizations().values():
            p.log_alpha.fill_(c)
    assert pruner.expected_sparsity().item() == pytest.approx(1 - l0.expected_open(torch.tensor(c)).item(), abs=1e-6)

    # a different constant per module: the expectation weights each module by its size
    consts = {}
    with torch.no_grad():
        for i, (name, p) in enumerate(pruner.parametrizations().items()):
            consts[name] = -1.0 + 0.3 * i
            p.log_alpha.fill_(consts[name])
    kept = sum(p.mask.numel() * l0.expected_open(torch.tensor(consts[n])).item() for n, p in pruner.parametrizations().items())
    total = sum(p.mask.numel() for p in pruner.parametrizations().values())
    assert pruner.expected_sparsity().item() == pytest.approx(1 - kept / total, abs=1e-6)
    assert pruner.current_sparsity() == pytest.approx(1 - kept / total, abs=1e-6)


def test_l0_lagrange_multipliers_ascend():
    model = tiny_bert()
    pruner = get_pruner_class("l0")(recipe("l0", {"constraint": "ascent"}))
    pruner.attach(model, TOTAL_STEPS)
    pruner.step = 10  # inside the window: the schedule asks for more than the gates give
    target = pruner.schedule(pruner.step)
    gap = pruner.expected_sparsity().item() - target
    assert gap < 0
    with torch.no_grad():
        pruner.lambda_1.fill_(-0.5)  # where ascent drives it while the sparsity is below target
        pruner.lambda_2.fill_(0.25)
    loss = pruner.penalty()
    assert loss.item() == pytest.approx(-0.5 * gap + 0.25 * gap * gap, rel=1e-5)
    loss.backward()
    assert pruner.lambda_1.grad.item() == pytest.approx(-gap, rel=1e-5)
    assert pruner.lambda_2.grad.item() == pytest.approx(-gap * gap, rel=1e-5)
    # the gates are not negated: they descend, so a negative lambda_1 closes gates (log_alpha down)
    gates = next(iter(pruner.parametrizations().values())).log_alpha
    assert torch.all(gates.grad > 0)

    groups = pruner.param_groups()
    multipliers = groups[1]["params"]
    assert multipliers[0] is pruner.lambda_1 and multipliers[1] is pruner.lambda_2
    torch.optim.SGD(multipliers, lr=1.0).step()
    # ascent on l1 * gap: with gap < 0 the multiplier goes further down
    assert pruner.lambda_1.item() == pytest.approx(-0.5 + gap, rel=1e-5)


@pytest.mark.parametrize("name", ["l0", "head_neuron_l0"])
@pytest.mark.parametrize("where", [torch.float64, pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no GPU"))])
def test_parameters_outside_the_model_follow_it(name, where):
    pruner = get_pruner_class(name)(recipe(name, {"constraint": "ascent"} if name == "l0" else None))
    pruner.attach(tiny_bert(), TOTAL_STEPS)
    outside = pruner.external_parameters()
    assert outside  # multipliers (and group gates)
    before = [id(p) for p in outside]
    pruner.to(where)
    moved = pruner.external_parameters()
    assert [id(p) for p in moved] == before  # the optimizer's tensors, moved in place
    if where == "cuda":
        assert all(p.is_cuda for p in moved)
    else:
        assert all(p.dtype == where for p in moved)


def test_l0_gates_are_fixed_after_the_window():
    model = tiny_bert()
    pruner = get_pruner_class("l0")(recipe("l0"))
    pruner.attach(model, TOTAL_STEPS)
    pruner.on_step_end(pruner.schedule.end_step)
    assert pruner.frozen
    assert pruner.penalty() is None
    assert pruner.current_sparsity() == expected_zeros(16384, TARGET) / 16384
    module = pruner.modules["bert.encoder.layer.0.attention.self.key"]
    model.train()  # no sampling once fixed: the weight is exactly original * mask
    assert torch.equal(module.weight, module.parametrizations.weight.original * module.parametrizations.weight[0].mask)


# --- finalised checkpoints -------------------------------------------------------------------


def test_finalised_bermo_round_trips_through_auto_class(tmp_path):
    model = tiny_bermo()
    pruner = get_pruner_class("magnitude")(recipe("magnitude"))
    pruner.attach(model, TOTAL_STEPS)
    train(model, pruner)
    pruner.finalize()
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is BermoForSequenceClassification
    a, b = dict(model.named_parameters()), dict(reloaded.named_parameters())
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name] == 0, b[name] == 0), name
    targeted = targeted_weight_names(reloaded)
    total = sum(b[n].numel() for n in targeted)
    assert sum(int((b[n] == 0).sum()) for n in targeted) == expected_zeros(total, TARGET)
    batch = {k: v for k, v in inputs().items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


# --- third-party pruners ---------------------------------------------------------------------


class RandomTestPruner(Pruner):
    name = "random_test"

    def scores(self):
        return {name: torch.rand(m.weight.shape) for name, m in self.modules.items()}


@pytest.fixture
def own_registry(monkeypatch):
    """A copy of the real registry (built-ins discovered), restored after the test."""
    available_pruners()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry._REGISTRY


def test_builtin_pruners_are_registered():
    assert {"magnitude", "random", "movement", "soft_movement", "l0", "platon"} <= set(available_pruners())


def test_third_party_pruner_registers_validates_and_prunes(own_registry):
    assert "random_test" not in available_pruners()
    register_pruner(RandomTestPruner)
    assert available_pruners()["random_test"] is RandomTestPruner
    assert {"magnitude", "random", "movement", "soft_movement", "l0", "platon"} <= set(available_pruners())

    r = Recipe.model_validate({"name": "random", "pruner": {"name": "random_test"}, "target_sparsity": 0.6})
    assert r.pruner.options == RandomTestPruner.Options()
    with pytest.raises(ValueError, match="options"):
        Recipe.model_validate({"name": "random", "pruner": {"name": "random_test", "options": {"x": 1}}, "target_sparsity": 0.6})

    torch.manual_seed(0)
    model = tiny_bert()
    pruner = get_pruner_class("random_test")(r)
    pruner.attach(model, TOTAL_STEPS)
    train(model, pruner)
    pruner.finalize()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    params = dict(model.named_parameters())
    targeted = targeted_weight_names(model)
    total = sum(params[n].numel() for n in targeted)
    assert sum(int((params[n] == 0).sum()) for n in targeted) == expected_zeros(total, 0.6)


def test_pruner_without_name_is_refused(own_registry):
    class Nameless(Pruner):
        pass

    with pytest.raises(TypeError, match="name"):
        register_pruner(Nameless)


def test_entry_point_discovery(monkeypatch, own_registry):
    class EntryPointPruner(RandomTestPruner):
        name = "from_entry_point"

    calls = []

    def fake_entry_points(group=None, **kwargs):
        calls.append(group)
        return [SimpleNamespace(name="from_entry_point", load=lambda: EntryPointPruner)]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_discovered", False)
    pruners = available_pruners()
    assert calls == [registry.ENTRY_POINT_GROUP]
    assert pruners["from_entry_point"] is EntryPointPruner
    assert {"magnitude", "movement", "soft_movement", "l0"} <= set(pruners)
    r = Recipe.model_validate({"name": "ep", "pruner": {"name": "from_entry_point"}, "target_sparsity": 0.5})
    assert r.pruner.name == "from_entry_point"
    available_pruners()
    assert len(calls) == 1  # discovery runs once


def test_large_in_window_updates_use_a_close_sampled_threshold():
    from bermo_prune.pruning.masks import APPROX_ABOVE, APPROX_TOLERANCE, topk_masks

    torch.manual_seed(0)
    scores = {"a": torch.randn(1024, 2048), "b": torch.randn(2048, 1536)}
    n = sum(s.numel() for s in scores.values())
    assert n > APPROX_ABOVE
    zeros = lambda masks: sum(int((m == 0).sum()) for m in masks.values())  # noqa: E731
    approx = topk_masks(scores, 0.7, "global", exact=False)
    assert abs(zeros(approx) - 0.7 * n) <= APPROX_TOLERANCE * n
    assert zeros(approx) != round(0.7 * n)  # really the sampled path, not the exact one
    assert zeros(topk_masks(scores, 0.7, "global", exact=True)) == round(0.7 * n)
    ties = {name: torch.zeros_like(s) for name, s in scores.items()}  # a sample cannot cut ties
    assert zeros(topk_masks(ties, 0.7, "global", exact=False)) == round(0.7 * n)


def test_the_trainer_builds_the_pruners_optimizer_groups_once(tmp_path):
    from transformers import TrainingArguments

    from bermo_prune.recipes import DivergenceSpec
    from bermo_prune.train import DivergenceGuard, PruningTrainer

    model = tiny_bert()
    pruner = get_pruner_class("l0")(recipe("l0"))
    pruner.attach(model, TOTAL_STEPS)
    trainer = PruningTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True),
                             pruner=pruner, guard=DivergenceGuard(DivergenceSpec()), mix_learning_rate=1e-3)
    first = trainer.create_optimizer()
    assert trainer.create_optimizer() is first
    gates = {id(p) for p in pruner.param_groups()[0]["params"]}
    assert sum(id(p) in gates for g in first.param_groups for p in g["params"]) == len(gates)
