"""The studies list (``/history``) and ``GET /api/studies`` show the numbers of the version a study shows.

A saved correction is a new mask version (``liverseg.web.corrections``); the store keeps the
model's numbers, so the listings must read the newest version's, and say who edited it.
"""

from __future__ import annotations

import re

import numpy as np

from liverseg.io import read_volume
from liverseg.testing import phantom
from liverseg.web import create_app
from liverseg.web.auth import create_user, new_token
from liverseg.web.views import _num

from test_corrections import _lesion_map, _nifti_bytes, _study, _to_file, phantom_app
from test_web import PASSWORD, login


def _row(html: str, study_id: str) -> tuple[str, list[str]]:
    """The history table's row of ``study_id``: its HTML and the texts of its number cells."""
    m = re.search(rf'<tr data-study="{study_id}"[^>]*>(.*?)</tr>', html, re.S)
    assert m, f"no row for {study_id} on the history page"
    return m.group(0), [c.strip() for c in re.findall(r'<td class="n">(.*?)</td>', m.group(1), re.S)]


def _cells(summary: dict) -> list[str]:
    """How the history page writes a summary: liver (mL, 0 dp), lesions, tumor (mL, 1 dp), burden (%, 2 dp)."""
    burden = summary["tumor_burden_pct"]
    return [_num(summary["liver_volume_ml"], 0),
            str(summary["lesion_count"]) if summary["lesion_count"] is not None else "—",
            _num(summary["tumor_volume_ml"], 1),
            f"{_num(burden, 2)} %" if burden is not None else "—"]


def test_history_and_api_listing_show_the_corrected_numbers_and_who_edited(tmp_path):
    ct, labels = phantom(shape=(20, 64, 64), spacing=(3.0, 1.5, 1.5), lesions=((7.0, None), (4.5, None)), seed=3)
    app, h = phantom_app(tmp_path, labels.array)
    store = app.extensions["liverseg"].store
    c, sid, body = _study(app, h, tmp_path, ct)
    model = body["summary"]
    assert model["lesion_count"] == 2

    page = app.test_client()
    assert login(page).status_code == 302
    row, cells = _row(page.get("/history").text, sid)
    assert cells == _cells(model) and "edited by" not in row and "data-mask-version" not in row

    # the known change: lesion 2 is erased to background, and so is the liver on every slice without tumor
    mask = read_volume(_to_file(tmp_path / "m.nii.gz", c.get(f"/api/studies/{sid}/files/mask.nii.gz",
                                                             headers=h).data)).array
    comp = _lesion_map(mask)
    corrected = mask.copy()
    corrected[comp == 2] = 0
    no_tumor = ~(corrected == 2).any(axis=(1, 2))
    corrected[no_tumor] = 0
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    r = c.put(f"/api/studies/{sid}/mask", headers=h, data=_nifti_bytes(corrected, ct.affine_ras(), gz=True))
    assert r.status_code == 201, r.json
    new = r.json["summary"]
    assert new["lesion_count"] == 1
    assert abs(new["liver_volume_ml"] - np.count_nonzero(corrected >= 1) * voxel_ml) < 1e-6 * max(1.0, new["liver_volume_ml"])
    assert abs(new["tumor_volume_ml"] - np.count_nonzero(corrected == 2) * voxel_ml) < 1e-6 * max(1.0, new["tumor_volume_ml"])
    old_cells, new_cells = _cells(model), _cells(new)
    assert all(o != n for o, n in zip(old_cells, new_cells)), (old_cells, new_cells)  # every column changes

    # the history page: the new numbers, none of the old ones, and who edited which version
    row, cells = _row(page.get("/history").text, sid)
    assert cells == new_cells
    assert "v2, edited by ada" in row and 'data-mask-version="2"' in row
    # ... also when found by a search
    row, cells = _row(page.get("/history", query_string={"q": "ct.nii"}).text, sid)
    assert cells == new_cells and "v2, edited by ada" in row

    # the REST listing: the same numbers, and the version with its editor
    listed = {s["id"]: s for s in c.get("/api/studies", headers=h).json["studies"]}[sid]
    assert listed["summary"] == new != model
    assert listed["mask_version"] == 2 and listed["versions"][-1]["edited_by"] == "ada"
    # the original's numbers are still the store's, and its version 1 is intact
    assert store.study(sid).lesion_count == 2
    assert c.get(f"/api/studies/{sid}/versions/1/files/mask.nii.gz", headers=h).status_code == 200

    # the comparison picker of a later study lists the baseline with its corrected lesion count (the version it compares)
    import time

    time.sleep(1.05)  # created_at (whole seconds) orders the baseline before the follow-up
    _, later, _ = _study(app, h, tmp_path, ct, name="later.nii.gz")
    pick = page.get(f"/studies/{later}/compare").text
    m = re.search(rf'value="{sid}".*?</tr>', pick, re.S)
    assert m, pick
    counts = re.findall(r'<td class="n">(.*?)</td>', m.group(0), re.S)
    assert counts and counts[0].startswith("1 ") and "v2" in counts[0], counts
