"""A minimal MONAI training loop: the calibration recipe, to compare liverseg's pipeline against.

Not part of the product. It trains the workplace's calibration point as plainly as MONAI
allows, so that a difference from ``liverseg train`` on the same split points at
liverseg's pipeline and not at the data:

* MONAI ``UNet`` (channels 16–256, strides 2, 2 residual units: 4.8 M parameters), one stage;
* every case resampled to 2.5 mm isotropic (``Spacingd``: bilinear image, nearest labels),
  HU clipped to −200..250 and scaled to 0..1 (``ScaleIntensityRanged``);
* 96³ patches, batch 2, ``RandCropByPosNegLabeld`` (pos 1 : neg 1 on label > 0), flips on all
  axes, a light ``RandAffined``, ``RandScaleIntensityd`` / ``RandShiftIntensityd``;
* liver-only cases keep label 1 only (their livers taught as tumor-free, no synthetic tumors);
* ``DiceCELoss(to_onehot_y, softmax)``, AdamW 1e-3 with cosine decay to 0 over the time budget;
* prediction: Gaussian ``sliding_window_inference`` (overlap 0.5), probabilities resampled back
  to the CT grid, argmax, largest liver (1 + 2) component, tumor kept inside the liver.

The held-out cases are scored with liverseg's LiTS metrics (``case_metrics``).

    .venv/bin/python benchmarks/monai_reference_loop.py --data ../shared/data/labeled \\
        --val 3Dircadb1.17 --minutes 30 --threads 1 --out runs/monai-ref
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402



def _as_dict(case):  # (1, z, y, x) arrays with a spacing affine, as MONAI's loaders would give
    import torch
    from monai.data import MetaTensor

    ct, ref = case.load()
    affine = torch.diag(torch.tensor([*ct.spacing, 1.0], dtype=torch.float64))
    lab = np.asarray(ref.array).astype(np.uint8)
    if not case.tumor_annotated:
        lab = (lab > 0).astype(np.uint8)  # liver-only: the liver, no tumor
    return {
        "image": MetaTensor(torch.from_numpy(np.asarray(ct.array, np.float32))[None], affine=affine),
        "label": MetaTensor(torch.from_numpy(lab)[None], affine=affine),
    }, ct, ref


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--val", nargs="+", required=True, help="held-out case ids")
    ap.add_argument("--minutes", type=float, default=36.0, help="training time budget (wall minutes)")
    ap.add_argument("--iterations", type=int, default=None,
                    help="train this many iterations instead of a time budget (a comparison that a busy CPU cannot skew)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("monai-ref")

    import torch
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.transforms import (Compose, RandAffined, RandCropByPosNegLabeld, RandFlipd, RandScaleIntensityd,
                                  RandShiftIntensityd, ScaleIntensityRanged, SpatialPadd, Spacingd)
    from monai.utils import set_determinism

    from liverseg.analysis.metrics import case_metrics
    from liverseg.inference.postprocess import largest_component
    from liverseg.training.config import load_config
    from liverseg.training.datasets import find_cases

    from evaluate_3d import RECIPE, with_recipe_fixes  # the same header fixes as the recipe and the evaluation

    recipe = load_config(RECIPE)

    torch.set_num_threads(args.threads)
    set_determinism(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for c in find_cases(args.data):
        cases.append(with_recipe_fixes(c, recipe))
    train_cases = [c for c in cases if c.case_id not in set(args.val)]
    val_cases = [c for c in cases if c.case_id in set(args.val)]
    pre = Compose([
        Spacingd(["image", "label"], pixdim=(2.5, 2.5, 2.5), mode=("bilinear", "nearest")),
        ScaleIntensityRanged("image", a_min=-200, a_max=250, b_min=0.0, b_max=1.0, clip=True),
        SpatialPadd(["image", "label"], spatial_size=(96, 96, 96)),  # small crops (the LiTS one): pad with air
    ])
    aug = Compose([
        RandCropByPosNegLabeld(["image", "label"], label_key="label", spatial_size=(96, 96, 96), pos=1, neg=1,
                               num_samples=1, image_key="image", image_threshold=-1),
        RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
        RandFlipd(["image", "label"], prob=0.5, spatial_axis=1),
        RandFlipd(["image", "label"], prob=0.5, spatial_axis=2),
        RandAffined(["image", "label"], prob=0.2, rotate_range=(0.1, 0.1, 0.1), scale_range=(0.1, 0.1, 0.1),
                    mode=("bilinear", "nearest"), padding_mode="border"),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5),
    ])
    train_data = [pre(_as_dict(c)[0]) for c in train_cases]
    log.info("training on %s, holding out %s", [c.case_id for c in train_cases], [c.case_id for c in val_cases])

    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
               num_res_units=2)
    log.info("UNet: %.2f M parameters", sum(p.numel() for p in net.parameters()) / 1e6)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-5)
    budget = args.minutes * 60.0
    rng = np.random.default_rng(args.seed)
    t0, it, losses = time.monotonic(), 0, []
    net.train()
    def progress() -> float:
        return it / args.iterations if args.iterations else (time.monotonic() - t0) / budget

    while progress() < 1.0:
        lr = 1e-3 * 0.5 * (1 + np.cos(np.pi * min(1.0, progress())))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = [aug(train_data[int(rng.integers(len(train_data)))])[0] for _ in range(2)]
        x = torch.stack([b["image"].as_tensor() for b in batch])
        y = torch.stack([b["label"].as_tensor() for b in batch]).long()
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        it += 1
        if it % 50 == 0:
            log.info("iteration %d, %.1f min, loss %.4f, lr %.2e", it, (time.monotonic() - t0) / 60,
                     float(np.mean(losses[-50:])), lr)
    train_minutes = (time.monotonic() - t0) / 60
    torch.save(net.state_dict(), out / "unet.pt")

    net.eval()
    results = {"iterations": it, "train_minutes": round(train_minutes, 1), "threads": args.threads,
               "train_cases": [c.case_id for c in train_cases], "validation_cases": [c.case_id for c in val_cases],
               "cases": {}}
    for c in val_cases:
        d, ct, ref = _as_dict(c)
        img = pre.transforms[1](pre.transforms[0](d))["image"]  # no padding: the grid must map back to the CT
        with torch.no_grad():
            prob = sliding_window_inference(img.as_tensor()[None], (96, 96, 96), 2, net, overlap=0.5,
                                            mode="gaussian").softmax(1)
        prob = torch.nn.functional.interpolate(prob, size=tuple(ct.shape), mode="trilinear", align_corners=False)
        lab = prob[0].argmax(0).numpy().astype(np.uint8)
        liver = largest_component(lab > 0)
        lab = np.where(liver, lab, 0).astype(np.uint8)
        m = case_metrics(lab, np.asarray(ref.array), ct.spacing)
        results["cases"][c.case_id] = {
            "liver_dice": m["liver"]["dice"], "tumor_dice": m["tumor"]["dice"] if c.tumor_annotated else None,
            "lesions_ref": m["detection"]["n_ref"], "lesions_pred": m["detection"]["n_pred"],
            "lesion_recall": m["detection"]["recall_iou0"], "lesion_precision": m["detection"]["precision_iou0"],
        }
        log.info("%s: %s", c.case_id, results["cases"][c.case_id])
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    sys.stdout.write(json.dumps(results, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
