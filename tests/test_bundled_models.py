"""The bundled models in models/: complete, verified, small, and still segmenting real CT.

The accuracy floors sit a little below what ``benchmarks/evaluate_bundle.py`` measured on the
held-out case (see each MODEL_CARD.md), so a regression in the reader, the preprocessing, the
cascade or the postprocessing that costs accuracy fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from liverseg.models.bundle import bundled_models_dir, load_bundle

BUNDLES = {"liver-tumor-3d": "3d", "liver-tumor-2d": "2d"}
#: held-out 3D-IRCADb 1.17, end to end (benchmarks/evaluate_bundle.py), minus a margin
FLOOR_3D = {"liver": 0.85, "tumor": 0.12}  # measured 0.869 / 0.167
FLOOR_2D_LIVER = 0.85  # measured 0.894 on these 4 slices


@pytest.mark.parametrize("name,kind", sorted(BUNDLES.items()))
def test_bundle_is_complete_verified_and_small(name: str, kind: str) -> None:
    folder = bundled_models_dir() / name
    assert (folder / "config.json").is_file(), f"models/{name} is missing; export it with liverseg.training.export_bundle"
    bundle = load_bundle(name)  # checks the weights' sha256 against config.json
    assert bundle.kind == kind
    assert sum(f.stat().st_size for f in folder.iterdir()) < 50e6
    for stage in bundle.stages:
        bundle.build(stage)  # every stage's weights fit its architecture
    card = (folder / "MODEL_CARD.md").read_text()
    for heading in ("## Training data", "## How well it does", "## Reproduce"):
        assert heading in card
    assert "3Dircadb1.17" in card  # the held-out case is named


@pytest.fixture(scope="module")
def ircad17(shared_data: Path):
    from liverseg.training.datasets import find_cases

    (case,) = find_cases(shared_data / "labeled" / "3Dircadb1.17", layout="ircadb")
    return case.load()


@pytest.mark.slow
def test_3d_bundle_on_the_held_out_ct(ircad17) -> None:
    from liverseg.analysis.metrics import dice
    from liverseg.inference import Predictor

    ct, ref = ircad17
    labels = Predictor("liver-tumor-3d", threads=2).predict(ct).labels
    assert labels.shape == ct.shape and labels.spacing == ct.spacing
    liver = dice(labels.array > 0, ref.array > 0)
    tumor = dice(labels.array == 2, ref.array == 2)
    assert liver >= FLOOR_3D["liver"], f"liver Dice {liver:.3f}"
    assert tumor >= FLOOR_3D["tumor"], f"tumor Dice {tumor:.3f}"


@pytest.mark.slow
def test_2d_bundle_on_held_out_slices(ircad17) -> None:
    from liverseg.analysis.metrics import dice
    from liverseg.inference import Predictor
    from liverseg.io import Volume

    ct, ref = ircad17
    predictor = Predictor(model_2d="liver-tumor-2d", threads=2)
    zs = np.where((ref.array > 0).any(axis=(1, 2)))[0]
    picks = np.linspace(zs.min(), zs.max(), 6)[1:-1].round().astype(int)
    preds = []
    for z in picks:
        one = Volume(array=ct.array[z : z + 1], spacing=ct.spacing, modality="CT", is_hu=True)
        preds.append(predictor.predict(one).labels.array[0])
    liver = dice(np.stack(preds) > 0, ref.array[picks] > 0)
    assert liver >= FLOOR_2D_LIVER, f"liver Dice {liver:.3f} on slices {picks.tolist()}"
