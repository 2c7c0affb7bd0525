"""Sparse checkpoint export: a packed bitmask plus the non-zero values of every weight.

An unstructured checkpoint at sparsity s stores its zeros explicitly; here a float tensor of n
entries costs n/8 bytes of mask plus (1 - s) * n values, i.e. about (1 - s + 1/32) of fp32
dense. Tensors for which that is not smaller (embeddings, LayerNorm, biases) stay dense.

Layout of an export directory:
  sparse_manifest.json          format, version, every tensor's shape/dtype/encoding/nnz, the
                                payload's sha256 and byte counts
  sparse_weights.safetensors    ``name::bitmask`` (uint8, numpy packbits order) + ``name::values``
                                (+ ``name::zero_signs``, see below), or ``name::dense``
  config.json, tokenizer files  copied from the checkpoint, so the export is self-contained

The round trip is bit-exact: weights zeroed by multiplication (e.g. ``torch.nn.utils.prune``)
are ``-0.0`` where they were negative, so the sign of the zeros is kept too (one bit per zero,
only for tensors that have a negative zero: about s/32 of dense more).
:func:`import_sparse` checks the checksum and every count before rebuilding anything, and any
mismatch is a :class:`BermoPruneError` (CLI exit code 2). Back to a plain checkpoint:
``bermo-prune export SPARSE_DIR --format dense --out DIR`` (:func:`export_dense`); straight to
a model: :func:`load_sparse`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bermo_prune.errors import BermoPruneError, first_line
from bermo_prune.io import staged_output, write_json_atomic
from bermo_prune.models import resolve_checkpoint

FORMAT, VERSION = "bermo-prune-sparse", 1
MANIFEST, PAYLOAD = "sparse_manifest.json", "sparse_weights.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


# --- encoding --------------------------------------------------------------------------------
def encode(name: str, tensor: torch.Tensor) -> tuple[dict, dict[str, torch.Tensor]]:
    """(manifest entry, payload tensors) for one tensor."""
    entry = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch."), "encoding": "dense"}
    size = tensor.element_size()
    if tensor.is_floating_point() and tensor.numel() > 0:
        flat = tensor.reshape(-1)
        keep = flat != 0  # NaNs are kept too
        nnz = int(keep.sum())
        # Masking by multiplication leaves -0.0 wherever the weight was negative; its sign is
        # kept in one bit per zero, and only when there is a negative zero at all.
        negative_zeros = torch.signbit(flat[~keep])
        parts = {f"{name}::bitmask": _pack(keep), f"{name}::values": flat[keep].clone()}
        if negative_zeros.any():
            parts[f"{name}::zero_signs"] = _pack(negative_zeros)
        stored = sum(t.numel() * t.element_size() for t in parts.values())
        if stored < tensor.numel() * size:
            entry.update(encoding="bitmask", nnz=nnz, stored_bytes=stored)
            return entry, parts
    entry["stored_bytes"] = tensor.numel() * size
    return entry, {f"{name}::dense": tensor.contiguous().clone()}


def _pack(bits: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(bits.numpy()))


def _unpack(packed: torch.Tensor, count: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=count).astype(bool))


def decode(name: str, entry: dict, payload: dict[str, torch.Tensor]) -> torch.Tensor:
    def bad(problem: str):
        return BermoPruneError(f"sparse export does not match its manifest: {name}: {problem}")

    try:
        shape, dtype, encoding = [int(d) for d in entry["shape"]], getattr(torch, entry["dtype"]), entry["encoding"]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise bad("malformed manifest entry") from None
    numel = int(np.prod(shape))
    if encoding == "dense":
        tensor = payload.get(f"{name}::dense")
        if tensor is None or list(tensor.shape) != shape or tensor.dtype != dtype:
            raise bad("dense tensor missing or of another shape/dtype")
        return tensor
    if encoding != "bitmask":
        raise bad(f"unknown encoding {encoding!r}")
    bits, values = payload.get(f"{name}::bitmask"), payload.get(f"{name}::values")
    if bits is None or values is None or bits.dtype != torch.uint8 or values.dtype != dtype:
        raise bad("bitmask or values missing or of another dtype")
    if bits.numel() != (numel + 7) // 8:
        raise bad(f"bitmask has {bits.numel()} bytes, shape {shape} needs {(numel + 7) // 8}")
    keep = _unpack(bits, numel)
    if int(keep.sum()) != values.numel() or values.numel() != entry.get("nnz"):
        raise bad(f"{int(keep.sum())} mask bits, {values.numel()} values, manifest says {entry.get('nnz')}")
    dense = torch.zeros(numel, dtype=dtype)
    dense[keep] = values
    signs = payload.get(f"{name}::zero_signs")
    if signs is not None:
        if signs.dtype != torch.uint8 or signs.numel() != (numel - values.numel() + 7) // 8:
            raise bad("zero_signs has the wrong size")
        dense[~keep] = torch.where(_unpack(signs, numel - values.numel()), -0.0, 0.0).to(dtype)
    return dense.reshape(shape)


# --- files -----------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local safetensors checkpoint (single file or sharded)."""
    folder = Path(checkpoint)
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    try:
        if single.is_file():
            return load_file(single)
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise BermoPruneError(f"{checkpoint}: cannot read the weights ({exc})") from None
    raise BermoPruneError(f"{checkpoint}: no model.safetensors (sparse export reads safetensors checkpoints)")


def _side_files(folder: Path) -> list[Path]:
    """Config, tokenizer and report files: every top-level file that is not weights or an export."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.endswith(WEIGHT_SUFFIXES) and p.name not in (MANIFEST, PAYLOAD))


def export_sparse(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """Write the sparse export of ``checkpoint`` into ``out``; returns the manifest."""
    source = Path(resolve_checkpoint(checkpoint))
    if not source.is_dir():
        raise BermoPruneError(f"{checkpoint}: sparse export needs a local checkpoint directory")
    state = read_state_dict(source)
    entries, payload = {}, {}
    for name, tensor in state.items():
        entries[name], parts = encode(name, tensor)
        payload.update(parts)
    with staged_output(out, overwrite) as stage:
        save_file(payload, stage / PAYLOAD, metadata={"format": FORMAT})
        files = [p.name for p in _side_files(source)]
        for name in files:
            shutil.copy2(source / name, stage / name)
        manifest = {
            "format": FORMAT, "version": VERSION, "source": str(checkpoint), "files": files,
            "payload": {"file": PAYLOAD, "sha256": sha256(stage / PAYLOAD), "bytes": (stage / PAYLOAD).stat().st_size},
            "dense_bytes": sum(t.numel() * t.element_size() for t in state.values()),
            "tensors": entries,
        }
        write_json_atomic(stage / MANIFEST, manifest)
    return manifest


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise BermoPruneError(f"{directory}: not a sparse export (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BermoPruneError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BermoPruneError(f"{path}: not a {FORMAT} v{VERSION} manifest")
    return manifest


def import_sparse(directory: str | Path) -> dict[str, torch.Tensor]:
    """The exact dense state dict of a sparse export (checksum and counts verified)."""
    manifest = read_manifest(directory)
    try:
        payload_path = Path(directory) / manifest["payload"]["file"]
        expected, tensors = manifest["payload"]["sha256"], manifest["tensors"]
    except (KeyError, TypeError):
        raise BermoPruneError(f"{directory}: manifest lacks payload or tensors") from None
    if not payload_path.is_file():
        raise BermoPruneError(f"{directory}: payload {payload_path.name} is missing")
    if sha256(payload_path) != expected:
        raise BermoPruneError(f"{payload_path}: sha256 does not match the manifest (corrupted or replaced)")
    try:
        payload = load_file(payload_path)
    except (SafetensorError, OSError) as exc:
        raise BermoPruneError(f"{payload_path}: unreadable ({exc})") from None
    state = {name: decode(name, entry, payload) for name, entry in tensors.items()}
    known = {f"{name}::{part}" for name in tensors for part in ("dense", "bitmask", "values", "zero_signs")}
    if extra := sorted(set(payload) - known):
        raise BermoPruneError(f"sparse export does not match its manifest: payload has unlisted tensors {extra[:3]}")
    return state


def export_dense(directory: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """Turn a sparse export back into a plain checkpoint (model.safetensors + the copied files)."""
    manifest = read_manifest(directory)
    state = import_sparse(directory)
    with staged_output(out, overwrite) as stage:
        save_file(state, stage / "model.safetensors", metadata={"format": "pt"})
        for name in manifest.get("files", []):
            if (Path(directory) / name).is_file():
                shutil.copy2(Path(directory) / name, stage / name)
    return {"source": str(directory), "out": str(out), "tensors": len(state), "dense_bytes": manifest["dense_bytes"]}


def load_sparse(directory: str | Path):
    """A model (BERT, BERMo or compacted BERT classifier) straight from a sparse export."""
    import bermo_prune  # noqa: F401  (registers BERMo and compacted BERT with the Auto classes)
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    state = import_sparse(directory)
    try:
        config = AutoConfig.from_pretrained(directory)
        model_class = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
        # The Auto class insists on a path; the concrete class takes the state dict alone.
        return model_class.from_pretrained(None, config=config, state_dict=state)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise BermoPruneError(f"cannot load {directory}: {first_line(exc)}") from None


def size_summary(manifest: dict, names=None) -> dict:
    """Dense vs stored bytes over all tensors or the given names (payload overheads excluded)."""
    tensors = manifest["tensors"]
    names = list(tensors) if names is None else list(names)

    def dense(e):
        return int(np.prod(e["shape"])) * torch.empty((), dtype=getattr(torch, e["dtype"])).element_size()

    dense_bytes = sum(dense(tensors[n]) for n in names)
    stored = sum(tensors[n]["stored_bytes"] for n in names)
    return {"dense_bytes": dense_bytes, "stored_bytes": stored, "ratio": stored / dense_bytes if dense_bytes else 0.0}
