"""The benchmark scripts run end to end in their --tiny modes (random tiny models, seconds), so a
script that no longer fits the library fails here rather than at the next full-scale run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_structured_latency_tiny(tmp_path):
    run_script("structured_latency.py", "--tiny", "--threads", "1", "--repeats", "3", "--out", str(tmp_path))
    report = json.loads((tmp_path / "structured_latency.json").read_text())
    assert report["tiny"] and len(report["latency"]) == 4
    assert all(row["speedup"] > 0 for row in report["latency"])


def test_deploy_latency_tiny(tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    run_script("deploy_latency.py", "--tiny", "--threads", "1", "--repeats", "3", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert {tuple(sorted(row)) for row in rows} == {
        ("batch", "dev_accuracy", "length", "model", "precision", "runtime", "size_mb", "speedup")}
    assert {(row["model"], row["runtime"], row["precision"]) for row in rows} == {
        (model, runtime, precision) for model in ("dense", "compact")
        for runtime, precision in (("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                   ("onnxruntime-fused", "fp32"), ("onnxruntime-fused", "int8"))}
    reference = [row["speedup"] for row in rows if (row["model"], row["runtime"]) == ("dense", "pytorch")]
    assert reference == [1.0] * 4
    sizes = {(row["model"], row["precision"], row["runtime"]): row["size_mb"] for row in rows}
    assert sizes[("dense", "int8", "onnxruntime")] < 0.5 * sizes[("dense", "fp32", "onnxruntime")]
