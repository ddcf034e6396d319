"""Speed and memory of the registered nnFormer configurations on this machine's CPU.

For each configuration (and a few unregistered width candidates for the liver model):
parameters, MACs per crop (matmuls and convolutions, counted with
``torch.utils.flop_counter.FlopCounterMode`` on the meta device: no compute, exact shapes),
forward time and peak memory per crop in PyTorch and in ONNX Runtime, and the time of one
training step (forward + backward + AdamW, deep supervision on). Each timed measurement runs
in a fresh subprocess so that its peak memory (``ru_maxrss`` minus the resident size just
before the timed work) is its own.

The big paper configurations (Synapse, BraTS) get parameters, MACs and a single PyTorch
forward only unless ``--everything`` is given: one forward takes tens of seconds on 2 cores.

Usage::

    .venv/bin/python benchmarks/model_speed.py                      # all configs + candidates, 2 threads
    .venv/bin/python benchmarks/model_speed.py --models nnformer-liver-3d --repeats 5
    .venv/bin/python benchmarks/model_speed.py --json results.json --markdown table.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

BIG = {"nnformer-synapse", "nnformer-brats"}
#: unregistered variants measured to choose the liver model's width (name -> (base, overrides))
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "liver-3d E=24 (candidate)": ("nnformer-liver-3d", {"embed_dim": 24, "num_heads": (1, 2, 4, 8)}),
    "liver-3d E=48 (candidate)": ("nnformer-liver-3d", {"embed_dim": 48, "num_heads": (3, 6, 12, 24)}),
}


def _spec(label: str) -> tuple[str, dict[str, Any]]:
    return CANDIDATES.get(label, (label, {}))


def _build(label: str, **extra: Any):
    import torch

    from liverseg.models import build_model

    base, overrides = _spec(label)
    torch.manual_seed(0)
    return build_model(base, **{**overrides, **extra})


def _input_shape(label: str, batch: int = 1) -> tuple[int, ...]:
    from liverseg.models import MODEL_CONFIGS, MODEL_INPUT_SIZES

    base, overrides = _spec(label)
    channels = overrides.get("in_channels", MODEL_CONFIGS[base]["in_channels"])
    return (batch, channels, *MODEL_INPUT_SIZES[base])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _static(label: str) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = _build(label).eval()
        x = torch.empty(_input_shape(label))
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net(x)
    return {
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "gmacs": counter.get_total_flops() / 2 / 1e9,
    }


# --------------------------------------------------------------------------- children (one measurement each)


def _child_torch(label: str, repeats: int, warmup: int) -> dict[str, Any]:
    import torch

    net = _build(label).eval()
    x = torch.randn(_input_shape(label))
    before = _rss_mb()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            net(x)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return {"torch_s": statistics.median(times), "torch_peak_mb": _peak_mb() - before, "torch_runs": len(times)}


def _child_export(label: str, path: str) -> dict[str, Any]:
    import torch

    net = _build(label).eval()
    x = torch.randn(_input_shape(label))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), path, dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["logits"])
    return {"export_s": time.perf_counter() - t0}


def _child_ort(label: str, path: str, repeats: int, warmup: int, threads: int) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    x = torch.randn(_input_shape(label)).numpy()
    before = _rss_mb()
    times = []
    out = None
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        (out,) = session.run(None, {"image": x})
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = _peak_mb() - before
    # parity with PyTorch on the same input
    net = _build(label).eval()
    with torch.inference_mode():
        ref = net(torch.from_numpy(x)).numpy()
    return {"ort_s": statistics.median(times), "ort_peak_mb": peak, "ort_max_abs_diff": float(np.abs(out - ref).max())}


def _child_train(label: str, repeats: int, warmup: int, batch: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    net = _build(label, deep_supervision=True).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    shape = _input_shape(label, batch)
    x = torch.randn(shape)
    classes = net.num_classes
    target = torch.randint(0, classes, (shape[0], *shape[2:]))
    before = _rss_mb()
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        outputs = net(x)
        loss = 0.0
        for k, out in enumerate(outputs):
            tk = target[(slice(None), *[slice(None, None, 2**k)] * (target.ndim - 1))]
            loss = loss + F.cross_entropy(out, tk) / 2**k
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"train_s": statistics.median(times), "train_peak_mb": _peak_mb() - before, "train_batch": batch}


def _run_child(args: argparse.Namespace, *child_args: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", *child_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| configuration | crop (voxels) | params (M) | GMACs / crop | PyTorch fwd (s) | PyTorch fwd peak (MB) "
            "| ONNX Runtime fwd (s) | ORT peak (MB) | ORT − PyTorch max abs | train step (s, batch) | train peak (MB) |")
    lines = [head, "|" + "|".join(["---"] * 11) + "|"]
    for r in rows:
        batch = "" if r.get("train_s") is None else f" ({r['train_batch']})"
        lines.append(
            f"| {r['name']} | {'×'.join(map(str, r['crop']))} | {r['params_m']:.2f} | {r['gmacs']:.1f} "
            f"| {_fmt(r.get('torch_s'), '.2f')} | {_fmt(r.get('torch_peak_mb'), '.0f')} "
            f"| {_fmt(r.get('ort_s'), '.2f')} | {_fmt(r.get('ort_peak_mb'), '.0f')} "
            f"| {_fmt(r.get('ort_max_abs_diff'), '.1e')} "
            f"| {_fmt(r.get('train_s'), '.2f')}{batch} "
            f"| {_fmt(r.get('train_peak_mb'), '.0f')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="configurations to measure (default: all registered + candidates)")
    parser.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the median is reported")
    parser.add_argument("--train-batch", type=int, default=2, help="batch size of the training step (default 2)")
    parser.add_argument("--everything", action="store_true", help="also ONNX and training for the big configurations")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        kind, label, *rest = args.child
        if kind == "torch":
            result = _child_torch(label, int(rest[0]), int(rest[1]))
        elif kind == "export":
            result = _child_export(label, rest[0])
        elif kind == "ort":
            result = _child_ort(label, rest[0], int(rest[1]), int(rest[2]), args.threads)
        else:
            result = _child_train(label, int(rest[0]), int(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return

    from liverseg.models import MODEL_CONFIGS

    labels = args.models or [*MODEL_CONFIGS, *CANDIDATES]
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in labels:
            row: dict[str, Any] = {"name": label, "crop": list(_input_shape(label)[2:]), **_static(label)}
            print(f"{label}: {row['params_m']:.2f} M params, {row['gmacs']:.1f} GMACs", file=sys.stderr, flush=True)
            big = label in BIG and not args.everything
            repeats, warmup = (1, 0) if big else (args.repeats, 1)
            row.update(_run_child(args, "torch", label, str(repeats), str(warmup)))
            if not big:
                path = os.path.join(tmp, "model.onnx")
                row.update(_run_child(args, "export", label, path))
                row.update(_run_child(args, "ort", label, path, str(args.repeats), "1"))
                row.update(_run_child(args, "train", label, str(args.repeats), "1", str(args.train_batch)))
            print(f"  {row}", file=sys.stderr, flush=True)
            rows.append(row)

    table = _markdown(rows)
    meta = {
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    print(table)
    print(f"\n{meta}")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
