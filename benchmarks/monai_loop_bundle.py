"""Put the weights of ``monai_reference_loop.py`` into a liverseg bundle, to predict them with the shipped ``Predictor``.

Not part of the product. The loop trains MONAI's residual ``UNet`` (16–256 channels, 2 residual units), which is
liverseg's ``unet-3d-baseline``; the loop resamples to 2.5 mm, cuts 96³ patches and scales HU −200..250 to 0..1,
which is a plan with ``clip_hu`` −200..250, ``mean_hu`` −200 and ``std_hu`` 450. This writes a one-stage bundle with
the loop's weights and that plan; its ``train_data`` record is the loop's split (``results.json`` beside the weights,
or ``--train-cases`` / ``--validation-cases``), so ``benchmarks/evaluate_3d.py`` knows which cases it never saw.
Predicting it separates what the loop's training gives from what its own inference (sliding window, largest
component) gives.

    .venv/bin/python benchmarks/monai_loop_bundle.py runs/cmp2162-monai/unet.pt --out runs/cand-loop2162
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _split(weights: Path, train: list[str] | None, val: list[str] | None) -> tuple[list[str], list[str]]:
    record_path = weights.parent / "results.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    train = train if train is not None else record.get("train_cases")
    # loops from before the split was recorded: the scored cases are the held-out ones
    val = val if val is not None else record.get("validation_cases", list(record.get("cases", {})))
    if train is None:
        raise SystemExit(f"error: {record_path} does not record the training cases; pass --train-cases")
    return list(train), list(val)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", help="unet.pt written by monai_reference_loop.py")
    ap.add_argument("--out", required=True, help="the new bundle folder (must not exist)")
    ap.add_argument("--train-cases", nargs="+", default=None,
                    help="the loop's training case ids (default: from results.json beside the weights)")
    ap.add_argument("--validation-cases", nargs="+", default=None,
                    help="the loop's held-out case ids (default: from results.json beside the weights)")
    args = ap.parse_args(argv)

    import torch

    from liverseg.models.bundle import Stage, save_bundle
    from liverseg.preprocessing.plan import Plan

    weights, out = Path(args.weights), Path(args.out)
    if out.exists():
        sys.stderr.write(f"error: {out} exists; choose a new folder\n")
        return 2
    train, val = _split(weights, args.train_cases, args.validation_cases)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    plan = Plan(spacing_mm=(2.5, 2.5, 2.5), clip_hu=(-200.0, 250.0), mean_hu=-200.0, std_hu=450.0,
                patch_size=(96, 96, 96), batch_size=2)
    stage = Stage(name="net", architecture="unet-3d-baseline", kwargs={}, plan=plan, role="segment")
    save_bundle(
        out, name=f"monai-loop-{weights.parent.name}", kind="3d", stages=[stage],
        state_dicts={stage.name: {"net." + k: v for k, v in state.items()}},  # the baseline wraps MONAI's UNet as .net
        info={"description": f"weights of benchmarks/monai_reference_loop.py ({weights}); "
                             "HU -200..250 scaled to 0..1 as the loop does",
              "train_data": {"sources": [], "train_cases": train, "validation_cases": val}},
    )
    digest = json.loads((out / "config.json").read_text())["weights_sha256"]
    sys.stdout.write(f"{out}: weights sha256 {digest[:16]}…\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
