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
    else:
        assert [s.role for s in cfg.stages] == ["localize", "segment"] and cfg.stages[0].merge_tumor


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
