"""benchmarks/monai_loop_bundle.py: the calibration loop's weights as a liverseg bundle.

The controlled comparison in docs/recipe_3d.md predicts the bare MONAI loop's weights with the shipped Predictor;
that only means something if the bundle is exactly the loop's network and its normalisation, and if it records
which cases the loop never saw (evaluate_3d.py labels held-out checks from it).
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "monai_loop_bundle.py"


def _loop_weights(tmp_path: Path, *, record: dict | None) -> tuple[Path, dict]:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
               num_res_units=2)
    folder = tmp_path / "loop"
    folder.mkdir()
    torch.save(net.state_dict(), folder / "unet.pt")
    if record is not None:
        (folder / "results.json").write_text(json.dumps(record))
    return folder / "unet.pt", net.eval()


def _run(argv: list[str]) -> int:
    old = sys.argv
    sys.argv = [str(BENCH), *argv]
    try:
        runpy.run_path(str(BENCH), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    finally:
        sys.argv = old
    return 0


def test_bundle_is_the_loop_network_with_its_split(tmp_path: Path) -> None:
    from liverseg.models.bundle import load_bundle

    weights, net = _loop_weights(tmp_path, record={"train_cases": ["a", "b"], "validation_cases": ["c"], "cases": {}})
    out = tmp_path / "bundle"
    assert _run([str(weights), "--out", str(out)]) == 0
    bundle = load_bundle(out)
    stage = bundle.stages[0]
    assert stage.architecture == "unet-3d-baseline"
    assert stage.plan.spacing_mm == (2.5, 2.5, 2.5) and tuple(stage.plan.patch_size) == (96, 96, 96)
    # the loop's ScaleIntensityRanged(-200..250 -> 0..1) is (hu - mean) / std with mean -200, std 450
    hu = np.array([-500.0, -200.0, 25.0, 250.0, 900.0])
    scaled = (np.clip(hu, *stage.plan.clip_hu) - stage.plan.mean_hu) / stage.plan.std_hu
    np.testing.assert_allclose(scaled, np.clip((hu + 200.0) / 450.0, 0.0, 1.0))
    assert bundle.info["train_data"]["train_cases"] == ["a", "b"]
    assert bundle.info["train_data"]["validation_cases"] == ["c"]
    built = bundle.build(stage)  # strict load: every tensor of the loop's UNet, nothing else
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(built(x) if not isinstance(built(x), (list, tuple)) else built(x)[0], net(x))


def test_old_loop_record_and_missing_split(tmp_path: Path) -> None:
    from liverseg.models.bundle import load_bundle

    # a results.json from before the split was recorded: the scored cases are the held-out ones, the training
    # cases must be given
    weights, _ = _loop_weights(tmp_path, record={"cases": {"c": {}}})
    assert _run([str(weights), "--out", str(tmp_path / "x")]) != 0
    assert not (tmp_path / "x").exists()
    assert _run([str(weights), "--train-cases", "a", "b", "--out", str(tmp_path / "y")]) == 0
    assert load_bundle(tmp_path / "y").info["train_data"]["validation_cases"] == ["c"]
    # an existing folder is never overwritten
    assert _run([str(weights), "--train-cases", "a", "--out", str(tmp_path / "y")]) == 2


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
