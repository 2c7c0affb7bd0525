"""Does MiniLM-L6 recover from movement-chosen masks when they stay fixed and it keeps training?

The one-shot probe (diagnose_movement.py) removes weights without retraining. This one fine-tunes
the pretrained MiniLM-L6 (BERT) on 8,000 SST-2 examples for BASE steps exactly as that script does
(AdamW 5e-5, 50-step warm-up, linear decay to step 500, clipping 1.0) while accumulating the
movement score S = -sum_t dL/dW * W; then, for each score and sparsity, it restores the state at
BASE steps, prunes every encoder Linear weight matrix once (per matrix), keeps those masks fixed and
trains on to step 500; it prints one JSON line per case (dev accuracy right after pruning and at
step 500, and the mean training loss over every 25 steps).

    OMP_NUM_THREADS=2 python benchmarks/diagnose_movement_retrain.py BASE SPARSITIES KINDS
    e.g. python benchmarks/diagnose_movement_retrain.py 150 0.05,0.3 movement,random

KINDS among movement (lowest S pruned), random, magnitude, abs_movement (lowest |S| pruned).
"""
import copy, json, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))  # diagnose_movement beside it
import torch
from transformers import DataCollatorWithPadding
from diagnose_movement import batches, accuracy
from bermo_prune.data import load_split, subsample, tokenize_dataset
from bermo_prune.models import load_classifier
from bermo_prune.pruning.masks import select_modules, topk_masks
from bermo_prune.recipes import DEFAULT_INCLUDE

torch.manual_seed(0)
model, tok = load_classifier("minilm-l6", "bert", num_labels=2)
train = tokenize_dataset(subsample(load_split("sst2", "train"), 8000, 0), tok, "sst2", 64)
dev = tokenize_dataset(load_split("sst2", "dev"), tok, "sst2", 64)
collate = DataCollatorWithPadding(tok)
modules = select_modules(model, [DEFAULT_INCLUDE])
S = {n: torch.zeros_like(m.weight) for n, m in modules.items()}
TOTAL, BASE = 500, int(sys.argv[1]) if len(sys.argv) > 1 else 150
opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / 50, max(0.0, (TOTAL - s) / (TOTAL - 50))))
gen = torch.Generator().manual_seed(0)
def stream():
    while True:
        yield from batches(train, collate, 32, gen)
it = stream()
model.train()
for step in range(BASE):
    b = next(it); loss = model(**b).loss; loss.backward()
    with torch.no_grad():
        for n, m in modules.items(): S[n].sub_(m.weight.grad * m.weight)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); sched.step(); opt.zero_grad()
print("base", BASE, "loss", float(loss), "dev", accuracy(model, dev, collate), flush=True)
state = copy.deepcopy((model.state_dict(), opt.state_dict(), sched.state_dict(), gen.get_state()))
W = {n: m.weight.detach().clone() for n, m in modules.items()}
kinds = {"movement": S, "random": {n: torch.rand(w.shape, generator=torch.Generator().manual_seed(7)) for n, w in W.items()},
         "magnitude": {n: w.abs() for n, w in W.items()}, "abs_movement": {n: s.abs() for n, s in S.items()}}
for kind, sp in [(k, float(a)) for a in sys.argv[2].split(",") for k in sys.argv[3].split(",")]:
    model.load_state_dict(state[0]); opt.load_state_dict(state[1]); sched.load_state_dict(state[2]); gen.set_state(state[3])
    masks = topk_masks(kinds[kind], sp, "per_layer")
    with torch.no_grad():
        for n, m in modules.items(): m.weight.mul_(masks[n])
    acc0 = accuracy(model, dev, collate)
    losses = []
    for step in range(BASE, TOTAL):
        b = next(it); loss = model(**b).loss; loss.backward()
        for n, m in modules.items(): m.weight.grad.mul_(masks[n])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); sched.step(); opt.zero_grad()
        with torch.no_grad():
            for n, m in modules.items(): m.weight.mul_(masks[n])
        losses.append(float(loss))
    curve = [round(sum(losses[i:i+25]) / 25, 3) for i in range(0, len(losses), 25)]
    print(json.dumps({"kind": kind, "sparsity": sp, "acc_one_shot": acc0, "acc_after": accuracy(model, dev, collate), "loss_every_25": curve}), flush=True)
