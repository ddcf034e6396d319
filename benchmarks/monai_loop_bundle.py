"""Put the weights of ``monai_reference_loop.py`` into a liverseg bundle, to predict them with the shipped ``Predictor``.

Not part of the product. The loop trains MONAI's residual ``UNet`` (16–256 channels, 2 residual units), which is
liverseg's ``unet-3d-baseline``; the loop scales HU −200..250 to 0..1, which is a plan with ``clip_hu`` −200..250,
``mean_hu`` −200 and ``std_hu`` 450. Given any bundle of that architecture as a template (for instance one exported
from ``configs/experiments/probe-in-pipeline-2162.json``), this writes a copy whose weights are the loop's and whose
plan normalises as the loop does. Predicting it with ``benchmarks/evaluate_3d.py`` separates what the loop's training
gives from what its own inference (sliding window, largest component) gives.

    .venv/bin/python benchmarks/monai_loop_bundle.py runs/cmp2162-monai/unet.pt --like runs/cand-probe2162 \\
        --out runs/cand-loop2162
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", help="unet.pt written by monai_reference_loop.py")
    ap.add_argument("--like", required=True, help="a one-stage unet-3d-baseline bundle folder to copy the config from")
    ap.add_argument("--out", required=True, help="the new bundle folder (must not exist)")
    args = ap.parse_args(argv)

    import dataclasses

    import torch

    from liverseg.models.bundle import Stage, save_bundle

    like, out = Path(args.like), Path(args.out)
    config = json.loads((like / "config.json").read_text())
    stages = [Stage.from_dict(d) for d in config.get("stages", [])]
    if len(stages) != 1 or stages[0].architecture != "unet-3d-baseline":
        sys.stderr.write(f"error: {like} is not a one-stage unet-3d-baseline bundle; export one from "
                         "configs/experiments/probe-in-pipeline-2162.json\n")
        return 2
    if out.exists():
        sys.stderr.write(f"error: {out} exists; choose a new folder\n")
        return 2
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    stage = stages[0]
    plan = dataclasses.replace(stage.plan, clip_hu=(-200.0, 250.0), mean_hu=-200.0, std_hu=450.0)
    stage = dataclasses.replace(stage, plan=plan)
    name = f"monai-loop-{Path(args.weights).parent.name}"
    save_bundle(
        out, name=name, kind="3d", stages=[stage],
        state_dicts={stage.name: {"net." + k: v for k, v in state.items()}},  # the baseline wraps MONAI's UNet as .net
        info={"description": f"weights of benchmarks/monai_reference_loop.py ({args.weights}) in the stage of {like}; "
                             "HU -200..250 scaled to 0..1 as the loop does",
              "train_data": config.get("train_data")},
    )
    digest = json.loads((out / "config.json").read_text())["weights_sha256"]
    sys.stdout.write(f"{out}: weights sha256 {digest[:16]}…\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
