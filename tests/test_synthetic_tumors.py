"""SyntheticTumors: lesions only inside the liver, sizes in range, darker/brighter, reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from liverseg.testing.phantom import phantom
from liverseg.training import SyntheticTumors


@pytest.fixture(scope="module")
def healthy() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    ct, lab = phantom(shape=(40, 96, 96), spacing=(2.5, 1.5, 1.5), lesions=(), seed=2)
    return ct.array, lab.array, ct.spacing


def test_labels_only_inside_liver_and_sizes_in_range(healthy) -> None:
    ct, lab, sp = healthy
    liver = lab > 0
    rng = np.random.default_rng(0)
    synth = SyntheticTumors(probability=1.0, max_count=3, radius_mm=(2.0, 12.0))
    n_lesions = 0
    for _ in range(6):
        img, out, info = synth.generate(ct, lab, sp, rng)
        assert not (out[~liver] > 0).any()  # nothing outside the liver
        assert ((out == 2) <= liver).all()
        assert np.array_equal(img[~liver], ct[~liver].astype(np.float32))  # other tissue untouched
        for t in info:
            assert 2.0 <= t.radius_mm <= 12.0
            # the distorted, liver-clipped shape stays near the drawn size
            assert 0.3 * 2 * t.radius_mm <= t.diameter_mm <= 1.6 * 2 * t.radius_mm + 2 * max(sp)
            assert out[t.centre] == 2
        n_lesions += len(info)
        assert (out == 2).sum() == sum(t.n_voxels for t in info) or len(info) > 1  # overlaps may merge
    assert n_lesions >= 6


def test_density_shift_sign(healthy) -> None:
    ct, lab, sp = healthy
    rng = np.random.default_rng(1)
    dark = SyntheticTumors(probability=1.0, max_count=1, radius_mm=(8.0, 8.0), hypodense_probability=1.0)
    img, out, (t,) = dark.generate(ct, lab, sp, rng)
    assert t.delta_hu < 0 and img[out == 2].mean() < ct[lab == 1].mean() - 20
    bright = SyntheticTumors(probability=1.0, max_count=1, radius_mm=(8.0, 8.0), hypodense_probability=0.0)
    img, out, (t,) = bright.generate(ct, lab, sp, rng)
    assert t.delta_hu > 0 and img[out == 2].mean() > ct[lab == 1].mean() + 10


def test_tiny_and_large_and_near(healthy) -> None:
    ct, lab, sp = healthy
    rng = np.random.default_rng(2)
    tiny = SyntheticTumors(probability=1.0, max_count=1, radius_mm=(1.5, 1.5))
    _, out, (t,) = tiny.generate(ct, lab, sp, rng)
    assert 1 <= t.n_voxels <= 20 and t.diameter_mm < 8
    large = SyntheticTumors(probability=1.0, max_count=1, radius_mm=(25.0, 25.0), distortion=0.1)
    _, out, (t,) = large.generate(ct, lab, sp, rng)
    assert t.diameter_mm > 30
    liver_idx = np.argwhere(lab > 0)
    target = tuple(liver_idx[len(liver_idx) // 3])
    _, out, (t,) = SyntheticTumors(probability=1.0, max_count=1, radius_mm=(4.0, 4.0)).generate(
        ct, lab, sp, rng, near=target
    )
    dist_mm = np.linalg.norm((np.asarray(t.centre) - np.asarray(target)) * np.asarray(sp))
    assert dist_mm < 25


def test_probability_determinism_and_checks(healthy) -> None:
    ct, lab, sp = healthy
    never = SyntheticTumors(probability=0.0)
    img, out = never(ct, lab, sp, np.random.default_rng(0))
    assert np.array_equal(out, lab) and np.array_equal(img, ct.astype(np.float32))
    forced = never(ct, lab, sp, np.random.default_rng(0), force=True)[1]
    assert (forced == 2).any()
    s = SyntheticTumors(probability=1.0)
    a = s(ct, lab, sp, np.random.default_rng(7))
    b = s(ct, lab, sp, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], s(ct, lab, sp, np.random.default_rng(8))[1])
    # no liver, nothing painted
    img, out = s(ct, np.zeros_like(lab), sp, np.random.default_rng(0), force=True)
    assert not out.any()
    # a single slice works too (the 2D path)
    img, out = s(ct[20:21], lab[20:21], sp, np.random.default_rng(3), force=True)
    assert out.shape == (1, 96, 96) and (out == 2).any()
    with pytest.raises(ValueError, match="probability"):
        SyntheticTumors(probability=1.5)
    with pytest.raises(ValueError, match="radius_mm"):
        SyntheticTumors(radius_mm=(10.0, 2.0))
    with pytest.raises(ValueError, match="max_count"):
        SyntheticTumors(max_count=0)
    with pytest.raises(ValueError, match="same shape|one shape"):
        s(ct, lab[:-1], sp, np.random.default_rng(0))
