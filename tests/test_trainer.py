"""Trainer tests: recipe parsing, schedules, Dice, and tiny end-to-end runs on the phantom."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from liverseg.errors import InputError
from liverseg.training.config import OptimizerConfig, StageConfig, TrainConfig, load_config
from liverseg.training.trainer import dice_score, learning_rate

REPO = Path(__file__).resolve().parents[1]

TINY_NET = {"embed_dim": 8, "depths": [1, 1, 1, 1], "drop_path_rate": 0.0}


def _recipe(**over):
    d = {
        "name": "tiny",
        "kind": "3d",
        "stages": [{"name": "net", "architecture": "nnformer-liver-3d", "model_kwargs": TINY_NET,
                    "plan": {"spacing_mm": [3.0, 3.0, 3.0], "patch_size": [16, 32, 32], "batch_size": 2}}],
    }
    d.update(over)
    return d


# --------------------------------------------------------------------------- config


def test_config_defaults_and_roundtrip(tmp_path):
    cfg = TrainConfig.from_dict(_recipe())
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.lr == 1e-2 and cfg.optimizer.momentum == 0.99
    assert cfg.optimizer.weight_decay == 3e-5 and cfg.optimizer.poly_exponent == 0.9
    assert cfg.stages[0].num_classes == 3
    p = tmp_path / "r.json"
    cfg.save(p)
    again = load_config(p)
    assert again == cfg


def test_merge_tumor_means_two_classes_and_cascade_order():
    s = StageConfig(name="coarse", architecture="nnformer-liver-3d-coarse", role="localize", merge_tumor=True)
    assert s.num_classes == 2 and s.model_kwargs["num_classes"] == 2
    with pytest.raises(ValueError, match="merge_tumor"):
        StageConfig(name="c", architecture="x", merge_tumor=True, model_kwargs={"num_classes": 3})
    fine = {"name": "fine", "architecture": "nnformer-liver-3d", "roi": "liver"}
    with pytest.raises(ValueError, match="localize"):
        TrainConfig.from_dict({"name": "x", "stages": [fine, {**fine, "name": "fine2"}]})


@pytest.mark.parametrize(
    "change, match",
    [
        ({"optimizer": {"name": "adam"}}, "optimizer name"),
        ({"optimizer": {"lr": 0}}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"kind": "4d"}, "kind"),
        ({"stages": []}, "at least one stage"),
        ({"bogus": 1}, "unknown keys"),
        ({"spacing_overrides": {"a": [1, 2]}}, "spacing_overrides"),
        ({"time_budget_minutes": -1}, "time_budget"),
    ],
)
def test_bad_recipes_raise(change, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(_recipe(**change))


def test_stage_rejects_bad_values():
    with pytest.raises(ValueError, match="roi"):
        StageConfig(name="a", architecture="x", roi="kidney")
    with pytest.raises(ValueError, match="plan keys"):
        StageConfig(name="a", architecture="x", plan={"spacing": [1, 1, 1]})
    with pytest.raises(ValueError, match="dots"):
        StageConfig(name="a.b", architecture="x")


def test_load_config_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_config(bad)
    bad.write_text(json.dumps({"name": "x", "stages": [], "epochs": 1}))
    with pytest.raises(InputError, match="at least one stage"):
        load_config(bad)


@pytest.mark.parametrize("name", ["liver-tumor-3d.json", "liver-tumor-2d.json"])
def test_shipped_recipes_parse(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.name and cfg.stages
    if cfg.kind == "2d":
        assert len(cfg.stages) == 1 and len(cfg.stages[0].plan["patch_size"]) == 2
    elif len(cfg.stages) > 1:  # a cascade: a 2-class localiser, then the segmenter
        assert [s.role for s in cfg.stages] == ["localize", "segment"] and cfg.stages[0].merge_tumor
    else:  # one stage on the whole scan
        assert cfg.stages[0].role == "segment" and cfg.stages[0].roi is None and cfg.stages[0].num_classes == 3


# --------------------------------------------------------------------------- schedule, Dice


def test_sgd_poly_schedule():
    opt = OptimizerConfig()
    assert learning_rate(opt, 0.0) == pytest.approx(1e-2)
    assert learning_rate(opt, 0.5) == pytest.approx(1e-2 * 0.5**0.9)
    assert learning_rate(opt, 1.0) == 0.0


def test_adamw_warmup_then_cosine():
    opt = OptimizerConfig(name="adamw", lr=1e-3, warmup_fraction=0.1, min_lr_fraction=0.0)
    # linear warm-up: step 5 of 10 warm-up steps (the step count, 1-based, leads the progress)
    assert learning_rate(opt, 0.05, step=5, total_steps=100) == pytest.approx(0.6e-3)
    assert learning_rate(opt, 0.1, step=10, total_steps=100) == pytest.approx(1e-3)
    assert learning_rate(opt, 0.55) == pytest.approx(0.5e-3)
    assert learning_rate(opt, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(opt, 0.0, step=0, total_steps=100) > 0


def test_dice_score_known_values():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    assert dice_score(a, b) == 1.0
    a[:2] = True
    assert dice_score(a, b) == 0.0
    b[:1] = True
    assert dice_score(a, b) == pytest.approx(2 * 16 / (32 + 16))
    assert math.isclose(dice_score(a, a), 1.0)


# --------------------------------------------------------------------------- end to end on the phantom


def case_ids(data) -> list[str]:
    from liverseg.training.datasets import find_cases

    return [c.case_id for c in find_cases(data)]


@pytest.fixture(scope="module")
def lits(tmp_path_factory):
    from lits_phantom import write_lits_phantom

    return write_lits_phantom(tmp_path_factory.mktemp("lits"), n=3)


def _tiny_config(lits, **over) -> TrainConfig:
    ids = case_ids(lits)
    d = _recipe(data=[str(lits)], validation_cases=[ids[-1]], epochs=2, iterations_per_epoch=1, val_every=1,
                device="cpu", num_threads=1)
    d["stages"][0]["augment"] = False
    d.update(over)
    return TrainConfig.from_dict(d)


@pytest.mark.slow
def test_train_writes_checkpoint_log_curve_and_weights(lits, tmp_path):
    from liverseg.training.trainer import train

    res = train(_tiny_config(lits), out_dir=tmp_path)
    st = res.stages["net"]
    d = tmp_path / "net"
    for name in ("checkpoint.pt", "log.csv", "curve.png", "best.safetensors", "last.safetensors", "plan.json", "stage.json"):
        assert (d / name).is_file(), name
    rows = list(csv.DictReader(open(d / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(float(r["loss"]) > 0 and 0 <= float(r["val_liver_dice"]) <= 1 for r in rows)
    assert st.epochs_done == 2 and st.iterations_done == 2 and st.stopped_by == "epochs"
    assert st.validation_cases == [case_ids(lits)[-1]] and st.validation_cases[0] not in st.train_cases
    assert st.best_metrics["per_case"][0]["case_id"] == st.validation_cases[0]
    assert (d / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_resume_continues_exactly(lits, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import liverseg.training.trainer as trainer

    cfg = _tiny_config(lits, epochs=3, iterations_per_epoch=2)
    trainer.train(cfg, out_dir=tmp_path / "straight")

    # the same run killed during its second epoch's validation, after epoch 1's checkpoint ...
    real_validate = trainer.validate
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(trainer, "validate", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, out_dir=tmp_path / "resumed")
    monkeypatch.setattr(trainer, "validate", real_validate)
    assert len(list(csv.DictReader(open(tmp_path / "resumed" / "net" / "log.csv")))) == 1
    # ... then resumed: same epochs, same weights as the uninterrupted run
    res = trainer.train(cfg, out_dir=tmp_path / "resumed", resume=True)
    assert res.stages["net"].epochs_done == 3 and res.stages["net"].iterations_done == 6
    rows = list(csv.DictReader(open(tmp_path / "resumed" / "net" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    a = load_file(str(tmp_path / "straight" / "net" / "last.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "net" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # resuming a finished stage keeps it
    again = trainer.train(cfg, out_dir=tmp_path / "resumed", resume=True)
    assert again.stages["net"].iterations_done == 6


def test_time_budget_stops_cleanly_and_saves(lits, tmp_path):
    from liverseg.training.trainer import train

    cfg = _tiny_config(lits, epochs=50, time_budget_minutes=1e-4)
    st = train(cfg, out_dir=tmp_path).stages["net"]
    assert st.stopped_by == "time_budget" and st.epochs_done == 1
    assert (tmp_path / "net" / "last.safetensors").is_file() and (tmp_path / "net" / "checkpoint.pt").is_file()
    assert st.last_metrics is not None  # validated before stopping


def test_cascade_export_roundtrip(lits, tmp_path):
    from safetensors.torch import load_file

    from liverseg.models import build_model
    from liverseg.models.bundle import load_bundle
    from liverseg.training.export import export_bundle
    from liverseg.training.trainer import train

    coarse = {"name": "coarse", "role": "localize", "architecture": "nnformer-liver-3d-coarse", "merge_tumor": True,
              "model_kwargs": TINY_NET, "augment": False,
              "plan": {"spacing_mm": [6.0, 6.0, 6.0], "patch_size": [16, 16, 16], "batch_size": 1}}
    fine = {"name": "fine", "role": "segment", "architecture": "nnformer-liver-3d", "roi": "liver", "roi_margin_mm": 10.0,
            "model_kwargs": TINY_NET, "augment": False,
            "plan": {"spacing_mm": [3.0, 3.0, 3.0], "patch_size": [16, 32, 32], "batch_size": 1}}
    cfg = _tiny_config(lits, epochs=1, stages=[coarse, fine])
    res = train(cfg, out_dir=tmp_path / "run")
    assert list(res.stages) == ["coarse", "fine"]
    folder = export_bundle(tmp_path / "run", dest=tmp_path / "bundle", command="liverseg train --config x.json")
    b = load_bundle(folder)
    assert [s.name for s in b.stages] == ["coarse", "fine"] and [s.role for s in b.stages] == ["localize", "segment"]
    assert b.stages[0].kwargs["num_classes"] == 2 and b.stages[1].roi_margin_mm == 10.0
    assert b.stages[1].plan.patch_size == (16, 32, 32)
    assert b.info["train_data"]["validation_cases"] == cfg.validation_cases
    assert b.info["metrics"]["stages"]["fine"]["per_case"]
    card = (folder / "MODEL_CARD.md").read_text()
    assert "liverseg train --config x.json" in card and cfg.validation_cases[0] in card
    # the bundle's network reproduces the trained network's outputs
    x = torch.randn(1, 1, 16, 32, 32)
    net = build_model("nnformer-liver-3d", **{**TINY_NET, "num_classes": 3})
    net.load_state_dict(load_file(str(tmp_path / "run" / "fine" / "best.safetensors")))
    with torch.no_grad():
        assert torch.allclose(b.build("fine")(x), net.eval()(x))


def test_cli_train_bad_data_is_exit_2(tmp_path, capsys):
    from liverseg.cli import main

    cfg = tmp_path / "r.json"
    TrainConfig.from_dict(_recipe()).save(cfg)
    assert main(["train", "--data", str(tmp_path / "nope"), "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--config", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")]) == 2


def test_cli_train_and_export(lits, tmp_path, capsys):
    from liverseg.cli import main
    from liverseg.models.bundle import load_bundle

    cfg = tmp_path / "r.json"
    _tiny_config(lits, epochs=1).save(cfg)
    rc = main(["train", "--data", str(lits), "--config", str(cfg), "--out", str(tmp_path / "o"), "--export", str(tmp_path / "b" / "tiny")])
    assert rc == 0, capsys.readouterr().err
    assert load_bundle(tmp_path / "b" / "tiny").info["reproduce"].startswith(f"liverseg train --data {lits} --config {cfg}")
