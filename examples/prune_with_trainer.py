"""Prune inside your own Hugging Face training script: a plain transformers.Trainer, the recipe's
pruner added by one callback.

    python examples/prune_with_trainer.py --recipe sst2-movement --target-sparsity 0.5 --out runs/own-script
    python examples/prune_with_trainer.py --arch bermo ...   # the same weights as BERMo

It fine-tunes (and prunes) a BERT checkpoint on SST-2 (the bundled copy unless --data names a GLUE
folder), then saves the pruned model, whose encoder Linear weights hold real zeros.
"""

from __future__ import annotations

import argparse

import numpy as np
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments)

from bermo_prune import PruningCallback, load_recipe, to_bermo
from bermo_prune.data import load_split, subsample, tokenize_dataset
from bermo_prune.models import resolve_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="minilm-l6", help="a BERT checkpoint: folder, hub id or minilm-l6")
    parser.add_argument("--arch", choices=["bert", "bermo"], default="bert")
    parser.add_argument("--recipe", default="sst2-magnitude")
    parser.add_argument("--target-sparsity", type=float, default=0.5)
    parser.add_argument("--data", default=None, help="GLUE folder with SST-2/{train,dev}.tsv (default: bundled)")
    parser.add_argument("--max-train-samples", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    path = resolve_checkpoint(args.checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, use_safetensors=True)
    if args.arch == "bermo":
        model = to_bermo(model)
    train = tokenize_dataset(subsample(load_split("sst2", "train", args.data), args.max_train_samples, 0), tokenizer,
                             "sst2", 64)
    dev = tokenize_dataset(load_split("sst2", "dev", args.data), tokenizer, "sst2", 64)

    pruning = PruningCallback(load_recipe(args.recipe, {"target_sparsity": args.target_sparsity}))
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=f"{args.out}/trainer", num_train_epochs=args.epochs, learning_rate=5e-5,
                               per_device_train_batch_size=32, per_device_eval_batch_size=128, report_to=[],
                               logging_steps=10, save_strategy="no", use_cpu=True),
        train_dataset=train,
        eval_dataset=dev,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())},
        callbacks=[pruning],
    )
    trainer.train()
    model = pruning.finalize()  # real zeros, no parametrisations: a plain model again
    metrics = trainer.evaluate()
    print(f"sparsity {pruning.final_sparsity:.2%}, dev accuracy {metrics['eval_accuracy']:.4f}")
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)


if __name__ == "__main__":
    main()
