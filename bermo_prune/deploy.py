"""ONNX export (fp32 or INT8) of BERT, BERMo and compacted checkpoints, and the runtime that reads it.

An export folder holds one ``model.onnx`` (inputs ``input_ids``, ``attention_mask``,
``token_type_ids``, dynamic batch and sequence axes; output ``logits``), the model's
``config.json`` and tokenizer files, and ``onnx_manifest.json``: precision, opset, the file's
sha256, library versions and the export-time check. The check runs a fixed batch of sentences of
different lengths (so padding is exercised) through PyTorch and ONNX Runtime and refuses the
export when their logits differ by more than the stated tolerance: an exporter or quantiser that
gets a model wrong fails at export time instead of being deployed.

``fuse=True`` exports the graph that ONNX Runtime's transformer optimizer recognises (torch's
TorchScript exporter, eager attention) and fuses it: one ``Attention`` node per layer,
``EmbedLayerNormalization``, ``SkipLayerNormalization``, ``BiasGelu``; INT8 then quantises the
fused attention as ``QAttention``. The optimizer takes one head count for the whole model, so for a
compacted model (heads removed per layer) each fused ``Attention`` node gets its own layer's count
from the width of its weights: the fp32 check alone would not catch a wrong count on a model with
small logits (measured on a tiny compacted model: 4e-5, under the 1e-4 tolerance).

INT8 is ONNX Runtime's dynamic quantisation of the MatMul/Gemm weights (QInt8 weights, activations
quantised per batch at run time): no calibration data, and the usual choice for transformer
encoders on CPU. Its logits move further from PyTorch's than fp32's do, so its check is relative
to the logits' scale; what quantisation costs in accuracy is measured by ``evaluate`` on the export.

:class:`OnnxClassifier` puts an export behind the call a transformers classifier has,
``model(**batch).logits``, so evaluation and prediction read a checkpoint or an export the same way
(:func:`load_for_inference`). ``onnx``, ``onnxscript`` and ``onnxruntime`` come with the
``onnx`` extra (``pip install "bermo-prune[onnx]"``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bermo_prune.errors import BermoPruneError, first_line
from bermo_prune.export import sha256
from bermo_prune.io import staged_output, write_json_atomic
from bermo_prune.models.load import (
    ONNX_MANIFEST, check_tokenizer_fits, is_onnx_export, load_trained_classifier, resolve_checkpoint,
)

FORMAT, VERSION = "bermo-prune-onnx", 1
MODEL_FILE = "model.onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PRECISIONS = ("fp32", "int8")
OPSET = 18
# fp32: ONNX Runtime and PyTorch run the same float32 arithmetic in a different order (fused
# kernels); measured differences on MiniLM-L6 are ~1e-6, so 1e-4 only catches real errors.
FP32_TOLERANCE = 1e-4
# int8: the largest logit difference as a share of the largest |logit| on the check batch. This
# catches a broken quantisation (garbage or non-finite outputs), not a loss of accuracy: logits
# near zero move by a large share of themselves (MiniLM-L6 with a fresh head: 0.01 by half of
# that). Accuracy is `evaluate`'s job; a label changed on the check batch is reported
# (``labels_kept``), not refused.
INT8_RELATIVE_TOLERANCE = 1.0
# Sentences of different lengths, so that the check batch is padded; the labels do not matter.
CHECK_SENTENCES = (
    "a gripping, funny and moving film.",
    "the plot is thin, the acting is worse, and the two hours feel like four.",
    "fine.",
    "it is neither as clever as it thinks nor as dull as its reviews say, but it has moments.",
)


def _onnx_libraries():
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise BermoPruneError('ONNX export and runtime need the onnx extra: pip install "bermo-prune[onnx]"') from None
    return onnxruntime


class _LogitsOnly(nn.Module):
    """The classifier as a function of the three token tensors, returning the logits alone."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def check_batch(tokenizer) -> dict[str, torch.Tensor]:
    batch = tokenizer(list(CHECK_SENTENCES), padding=True, return_tensors="pt")
    batch.setdefault("token_type_ids", torch.zeros_like(batch["input_ids"]))
    return {name: batch[name] for name in INPUTS}


@contextlib.contextmanager
def _errors_only(logger_name: str | None):
    """Let the named logger (None: the root logger) pass only errors while the block runs."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _torch_export(model, batch: dict[str, torch.Tensor], path: Path, opset: int, for_fusion: bool = False) -> None:
    try:
        # The exporter's notes about torchvision ops (this model has none) and its deprecation
        # chatter are not about this model.
        with _errors_only("torch.onnx"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if for_fusion:
                # ONNX Runtime's fusions match the TorchScript exporter's graph of eager attention;
                # the dynamo exporter's graph leaves attention unfused (checked on MiniLM-L6).
                _use_eager_attention(model)
                torch.onnx.export(
                    _LogitsOnly(model).eval(), tuple(batch[name] for name in INPUTS), str(path), input_names=list(INPUTS),
                    output_names=["logits"], dynamic_axes={name: {0: "batch", 1: "sequence"} for name in INPUTS},
                    opset_version=opset, dynamo=False,
                )
                return
            dynamic = {name: {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC} for name in INPUTS}
            torch.onnx.export(
                _LogitsOnly(model).eval(), args=(), kwargs=batch, f=str(path), input_names=list(INPUTS),
                output_names=["logits"], dynamic_shapes=dynamic, opset_version=opset, dynamo=True,
                external_data=False, verbose=False, report=False,
            )
    except Exception as exc:  # the exporter's boundary: any failure is this model's, in one line
        raise BermoPruneError(f"torch.onnx.export failed: {first_line(exc)}") from None


def _use_eager_attention(model: nn.Module) -> None:
    """Switch every attention of ``model`` to transformers' eager implementation (matmul, softmax,
    matmul), the pattern ONNX Runtime fuses. Set on each config the modules hold: BERMo's
    encoder may hold its own."""
    for config in {id(c): c for c in (getattr(m, "config", None) for m in model.modules()) if c is not None}.values():
        config._attn_implementation = "eager"


def fuse_transformer_ops(path: Path, config) -> dict[str, int]:
    """Rewrite the ONNX file at ``path`` with ONNX Runtime's BERT fusions; returns the fused
    operators and how many of each."""
    from onnxruntime.transformers.optimizer import optimize_model

    head_size = config.hidden_size // config.num_attention_heads
    try:
        with _errors_only(None), _errors_only("onnxruntime.transformers"):
            # opt_level 0: the Python fusions only; ONNX Runtime applies its own graph
            # optimisations for the machine it runs on when a session loads the file.
            optimized = optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads,
                                       hidden_size=config.hidden_size, opt_level=0)
        weights = {tensor.name: tensor for tensor in optimized.model.graph.initializer}
        for node in optimized.model.graph.node:
            if node.op_type != "Attention":
                continue
            width = weights[node.input[1]].dims[1] // 3  # q, k and v side by side
            for attribute in node.attribute:
                if attribute.name == "num_heads":
                    attribute.i = width // head_size
        optimized.save_model_to_file(str(path))
    except Exception as exc:
        raise BermoPruneError(f"ONNX Runtime's transformer fusion failed: {first_line(exc)}") from None
    return {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}


def attention_heads(path: Path) -> list[int]:
    """The head count of each fused Attention node of an ONNX file, in graph order."""
    import onnx

    return [attribute.i for node in onnx.load(str(path)).graph.node if node.op_type in ("Attention", "QAttention")
            for attribute in node.attribute if attribute.name == "num_heads"]


def _session(path: Path, threads: int | None = None):
    ort = _onnx_libraries()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    # ONNX Runtime's threads spin for a while after each run by default, holding the cores that
    # PyTorch (training, a tokenizer, another model being timed) needs next: measured at batch 1,
    # a PyTorch model timed between ONNX Runtime runs ran 3x slower. Idle threads sleep instead.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BermoPruneError(f"{path}: ONNX Runtime cannot load it ({first_line(exc)})") from None


def _run_session(session, batch: dict) -> np.ndarray:
    feed = {name: np.asarray(batch[name], dtype=np.int64) for name in INPUTS}
    return session.run(["logits"], feed)[0]


def compare_logits(expected: np.ndarray, got: np.ndarray, precision: str) -> dict:
    """The export-time check: how far ONNX Runtime's logits are from PyTorch's, and whether that is
    within the precision's tolerance."""
    diff = float(np.abs(expected - got).max())
    check = {"examples": int(expected.shape[0]), "max_abs_diff": diff}
    if precision == "fp32":
        check.update(tolerance=FP32_TOLERANCE, passed=bool(diff <= FP32_TOLERANCE))
        return check
    scale = float(np.abs(expected).max())
    relative = diff / max(scale, 1e-6)
    same_labels = expected.shape[1] == 1 or bool((expected.argmax(1) == got.argmax(1)).all())
    check.update(relative_diff=relative, relative_tolerance=INT8_RELATIVE_TOLERANCE, labels_kept=same_labels,
                 passed=bool(np.isfinite(got).all() and relative <= INT8_RELATIVE_TOLERANCE))
    return check


def export_onnx(checkpoint: str | Path, out: str | Path, *, precision: str = "fp32", opset: int = OPSET,
                fuse: bool = False, overwrite: bool = False) -> dict:
    """Export ``checkpoint`` to ONNX in ``out`` (with ONNX Runtime's transformer fusions when
    ``fuse``), check it against PyTorch, and return the manifest."""
    if precision not in PRECISIONS:
        raise BermoPruneError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    _onnx_libraries()
    model, tokenizer = load_trained_classifier(checkpoint)  # a random head would be exported as if trained
    batch = check_batch(tokenizer)
    with torch.inference_mode():
        expected = model(**batch).logits.numpy()
    with staged_output(out, overwrite) as stage:
        fp32_path = stage / (MODEL_FILE if precision == "fp32" else "model.fp32.onnx")
        _torch_export(model, batch, fp32_path, opset, for_fusion=fuse)
        fused = fuse_transformer_ops(fp32_path, model.config) if fuse else None
        checks = {"fp32": compare_logits(expected, _run_session(_session(fp32_path), batch), "fp32")}
        if precision == "int8":
            _quantize_dynamic(fp32_path, stage / MODEL_FILE, fused=fuse)
            fp32_path.unlink()
            checks["int8"] = compare_logits(expected, _run_session(_session(stage / MODEL_FILE), batch), "int8")
        for name, check in checks.items():
            if not check["passed"]:
                raise BermoPruneError(f"the {name} ONNX model does not match PyTorch on the check batch: {_describe(check)}")
        model.config.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        manifest = {
            "format": FORMAT, "version": VERSION, "source": str(checkpoint), "arch": model.config.model_type,
            "precision": precision, "opset": opset, "inputs": list(INPUTS), "outputs": ["logits"],
            "fused_ops": fused, "file": MODEL_FILE, "sha256": sha256(stage / MODEL_FILE), "bytes": (stage / MODEL_FILE).stat().st_size,
            "check": checks[precision], "versions": _versions(),
        }
        write_json_atomic(stage / ONNX_MANIFEST, manifest)
    return manifest


def _describe(check: dict) -> str:
    if "relative_diff" not in check:
        return f"max |logit difference| {check['max_abs_diff']:.3g} > {check['tolerance']:g}"
    return (f"max |logit difference| is {check['relative_diff']:.1%} of the largest logit "
            f"(tolerance {check['relative_tolerance']:.0%})")


def _quantize_dynamic(source: Path, target: Path, fused: bool = False) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    source, target = source.resolve(), target.resolve()  # the working directory changes below
    prepared = source.with_suffix(".prepared.onnx")
    cwd = os.getcwd()
    try:
        # ONNX's tools can leave uuid-named weight files in the working directory when they fail:
        # work in the staging folder, which is removed with whatever is in it on failure.
        os.chdir(target.parent)
        if fused:
            # A fused graph is already optimised, and ONNX's shape inference cannot type the
            # outputs of ONNX Runtime's own operators: the quantiser is told they are float.
            prepared, options = source, {"DefaultTensorType": onnx.TensorProto.FLOAT}
        else:
            # ONNX Runtime's pre-processing (ONNX shape inference, graph optimisation), as its
            # quantisation guide asks; its symbolic shape inference does not follow torch's dynamic axes.
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            options = {}
        with _errors_only(None):  # the quantiser warns through the root logger
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8, extra_options=options)
    except Exception as exc:
        raise BermoPruneError(f"INT8 quantisation failed: {first_line(exc)}") from None
    finally:
        os.chdir(cwd)
        if prepared != source:
            prepared.unlink(missing_ok=True)


def _versions() -> dict:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def read_onnx_manifest(directory: str | Path) -> dict:
    """The manifest of an export folder, checked against the model file it describes."""
    folder = Path(directory)
    try:
        manifest = json.loads((folder / ONNX_MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            raise BermoPruneError(f"{directory}: {ONNX_MANIFEST} is not a {FORMAT} manifest")
        if manifest.get("version") != VERSION:
            raise BermoPruneError(f"{directory}: ONNX export version {manifest.get('version')} (this bermo-prune reads {VERSION})")
        if Path(manifest["file"]).name != manifest["file"]:
            raise BermoPruneError(f"{directory}: {ONNX_MANIFEST} names a model outside the folder: {manifest['file']!r}")
        model_file = folder / manifest["file"]
        expected_sha = manifest["sha256"]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise BermoPruneError(f"{directory}: unreadable {ONNX_MANIFEST} ({type(exc).__name__}: {exc})") from None
    if not model_file.is_file():
        raise BermoPruneError(f"{directory}: {model_file.name} is missing")
    if sha256(model_file) != expected_sha:
        raise BermoPruneError(f"{directory}: {model_file.name} does not match its manifest's sha256 (changed or corrupt)")
    return manifest


class _Output:
    def __init__(self, logits: torch.Tensor):
        self.logits = logits


class OnnxClassifier:
    """An ONNX export behind a transformers classifier's call: ``model(**batch).logits``."""

    def __init__(self, directory: str | Path, threads: int | None = None):
        from transformers import AutoConfig

        import bermo_prune.models  # noqa: F401  (registers BERMo and compacted BERT with AutoConfig)

        self.directory = Path(directory)
        self.manifest = read_onnx_manifest(directory)
        try:
            self.config = AutoConfig.from_pretrained(str(directory))
        except Exception as exc:
            raise BermoPruneError(f"{directory}: cannot read config.json ({first_line(exc)})") from None
        self.session = _session(self.directory / self.manifest["file"], threads)
        names = [i.name for i in self.session.get_inputs()]
        if names != list(INPUTS) or [o.name for o in self.session.get_outputs()] != ["logits"]:
            raise BermoPruneError(f"{directory}: the ONNX model takes {names}, not {list(INPUTS)} -> logits")
        labels = self.session.get_outputs()[0].shape[-1]
        if isinstance(labels, int) and labels != self.config.num_labels:
            raise BermoPruneError(f"{directory}: the ONNX model has {labels} outputs but config.json {self.config.num_labels} labels")

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, **_unused) -> _Output:
        ids = np.asarray(input_ids, dtype=np.int64)
        batch = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids) if attention_mask is None else attention_mask,
            "token_type_ids": np.zeros_like(ids) if token_type_ids is None else token_type_ids,
        }
        return _Output(torch.from_numpy(_run_session(self.session, batch)))


def load_onnx(directory: str | Path, threads: int | None = None):
    """(OnnxClassifier, tokenizer) for an export folder."""
    from transformers import AutoTokenizer

    model = OnnxClassifier(directory, threads)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except Exception as exc:
        raise BermoPruneError(f"{directory}: cannot load its tokenizer ({first_line(exc)})") from None
    check_tokenizer_fits(str(directory), tokenizer, model.config.vocab_size)
    return model, tokenizer


def load_for_inference(checkpoint: str | Path, threads: int | None = None):
    """(model, tokenizer) for a PyTorch checkpoint or an ONNX export, both called as ``model(**batch)``."""
    checkpoint = resolve_checkpoint(checkpoint)
    if is_onnx_export(checkpoint):
        return load_onnx(checkpoint, threads)
    return load_trained_classifier(checkpoint)
