"""The CLI and the Python API refuse meaningless arguments with a clear error (issue 18, item 9)."""

from __future__ import annotations

import logging
import os

import pytest

import bad_inputs as bi
from liverseg.cli import configure_logging, main
from liverseg.errors import ModelError
from liverseg.inference import Predictor


def test_users_list_takes_data_dir_after_the_action(tmp_path, capsys):
    d = str(tmp_path / "data")
    assert main(["users", "add", "ada", "--data-dir", d]) == 0
    capsys.readouterr()
    assert main(["users", "list", "--data-dir", d]) == 0
    assert capsys.readouterr().out.startswith("ada\t")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"tta": "no"}, TypeError, "tta must be True, False or None"),
    ({"tta": 1}, TypeError, "tta must be True, False or None"),
    ({"min_tumor_volume_mm3": float("nan")}, ValueError, "finite"),
    ({"liver_dilation_mm": float("inf")}, ValueError, "finite"),
    ({"overlap": float("nan")}, ValueError, "finite"),
    ({"threads": 2.5}, ValueError, "threads"),
    ({"threads": True}, ValueError, "threads"),
    ({"liver_dilation_mm": 1e6}, ValueError, "0..50 mm"),
])
def test_predictor_refuses_meaningless_options(tiny_bundle_3d, kwargs, error, match):
    with pytest.raises(error, match=match):
        Predictor(tiny_bundle_3d, model_2d=None, **kwargs)


def test_predictor_model_of_the_wrong_type_is_a_clear_error():
    with pytest.raises(TypeError, match="model must be a bundled model name .* got int 42"):
        Predictor(42)  # type: ignore[arg-type]


def test_unknown_model_name_fails_at_construction_not_at_first_use(tiny_bundle_3d):
    with pytest.raises(ModelError, match="no model bundle at 'nope'"):
        Predictor("nope", model_2d=None)
    with pytest.raises(ModelError, match="no model bundle"):
        Predictor(tiny_bundle_3d, model_2d="nope-2d")


def test_threads_beyond_the_cores_are_capped(tiny_bundle_3d, caplog):
    p = Predictor(tiny_bundle_3d, model_2d=None, threads=1000)
    assert p.threads == (os.cpu_count() or 1)
    assert "CPU cores" in caplog.text


@pytest.mark.parametrize("option", [["--overlap", "nan"], ["--overlap", "inf"], ["--threads", "0"],
                                    ["--threads", "many"]])
def test_cli_refuses_non_finite_and_non_positive_numbers(tmp_path, option, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tmp_path), "-o", str(tmp_path / "o"), *option])
    assert exc.value.code == 2
    assert option[0] in capsys.readouterr().err


def test_library_info_lines_stay_out_of_the_log():
    configure_logging(0)
    try:
        assert not logging.getLogger("highdicom").isEnabledFor(logging.INFO)
        assert not logging.getLogger("highdicom.seg.sop").isEnabledFor(logging.INFO)
        assert logging.getLogger("liverseg.web.jobs").isEnabledFor(logging.INFO)
        assert logging.getLogger("highdicom").isEnabledFor(logging.WARNING)
    finally:
        logging.getLogger("liverseg").setLevel(logging.NOTSET)
        logging.getLogger("highdicom").setLevel(logging.NOTSET)


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    from liverseg.io import read_volume

    bi.dicom_series(tmp_path / "s", n=60)
    capsys.readouterr()
    assert read_volume(tmp_path / "s").shape[0] == 60
    assert "reading DICOM" not in capsys.readouterr().err
