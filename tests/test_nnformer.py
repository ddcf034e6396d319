"""Tests of the nnFormer network and its registry (tiny embedding dims: each test well under a second)."""

from __future__ import annotations

import math

import pytest
import torch

from liverseg.models import MODEL_CONFIGS, MODEL_INPUT_SIZES, NNFormer, build_model
from liverseg.models.nnformer import _relative_position_index, _shift_mask, _window_partition, _window_reverse

TINY_3D = dict(in_channels=1, num_classes=3, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
               patch_size=(2, 4, 4), window_size=(4, 4, 8, 4))
TINY_2D = dict(in_channels=1, num_classes=3, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
               patch_size=(4, 4), window_size=(8, 8, 16, 8), spatial_dims=2)


def _tiny(config: dict, **overrides) -> NNFormer:
    torch.manual_seed(0)
    return NNFormer(**{**config, **overrides})


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [(19, 37, 41), (1, 1, 1), (3, 50, 9), (17, 16, 33)])
def test_3d_output_shape_any_size(size):
    net = _tiny(TINY_3D).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, *size))
    assert out.shape == (2, 3, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(37, 41), (1, 1), (65, 17)])
def test_2d_output_shape_any_size(size):
    net = _tiny(TINY_2D).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, *size))
    assert out.shape == (1, 3, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("config,size", [(TINY_3D, (19, 37, 41)), (TINY_2D, (37, 43))])
def test_deep_supervision_outputs_in_training_only(config, size):
    net = _tiny(config, deep_supervision=True).train()
    outs = net(torch.randn(1, 1, *size))
    assert isinstance(outs, list) and len(outs) == 3
    for k, out in enumerate(outs):
        assert out.shape == (1, 3, *[math.ceil(s / 2**k) for s in size])
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, *size))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, *size)


@pytest.mark.parametrize("config,size", [(TINY_3D, (19, 37, 41)), (TINY_2D, (37, 43))])
def test_refine_head_keeps_shapes_and_trains_every_parameter(config, size):
    net = _tiny(config, refine_head=True, deep_supervision=True).train()
    outs = net(torch.randn(2, 1, *size))
    assert [tuple(o.shape) for o in outs] == [(2, 3, *[math.ceil(s / 2**k) for s in size]) for k in range(3)]
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reaches {missing}"
    assert isinstance(net.heads[0], torch.nn.Identity)  # the paper's stride-`patch` head is replaced


def test_refine_head_outputs_vary_inside_a_token_block():
    # the paper's head maps each token to its whole patch block by one linear map, so one
    # token's block of logits is fixed by that token alone; the refined head also sees the
    # stem's features at stride 2: two inputs with the same tokens but different fine detail
    # inside one block can differ there. Check that the refined head resolves a 2-voxel stripe
    # pattern at least as well as the plain one after a few steps of fitting it.
    torch.manual_seed(0)
    size = (8, 16, 16)
    x = torch.randn(1, 1, *size)
    target = ((torch.arange(16) // 2) % 2).expand(*size).clone()[None]  # stripes 2 voxels wide along x
    errors = {}
    for refine in (False, True):
        net = _tiny(TINY_3D, refine_head=refine).train()
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(60):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x), target)
            loss.backward()
            opt.step()
        with torch.no_grad():
            errors[refine] = float((net.eval()(x).argmax(1) != target).float().mean())
    assert errors[True] <= errors[False] + 0.02, errors


def test_no_deep_supervision_gives_one_tensor_in_training():
    net = _tiny(TINY_3D, deep_supervision=False).train()
    out = net(torch.randn(1, 1, 9, 20, 21))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 9, 20, 21)


def test_two_stage_network_supervises_as_a_list():
    net = _tiny(TINY_3D, depths=(1, 1), num_heads=(1, 2), window_size=(4, 4), deep_supervision=True).train()
    outs = net(torch.randn(1, 1, 5, 9, 10))
    assert isinstance(outs, list) and len(outs) == 1 and outs[0].shape == (1, 3, 5, 9, 10)


# --------------------------------------------------------------------------- training / determinism


@pytest.mark.parametrize("config,size", [(TINY_3D, (17, 40, 36)), (TINY_2D, (41, 37))])
def test_gradient_reaches_every_parameter(config, size):
    # deep supervision on, so that the auxiliary heads take part; windows smaller than the maps so
    # that shifted windows (and their masks) are exercised, and deepest maps of more than one token
    # (a single token makes the attention bias irrelevant).
    net = _tiny(config, deep_supervision=True).train()
    x = torch.randn(2, 1, *size)
    loss = sum(out.square().mean() for out in net(x))
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reaches {missing}"


def test_eval_mode_is_deterministic_and_batch_independent():
    net = _tiny(TINY_3D, drop_path_rate=0.3, drop_rate=0.2).eval()
    x = torch.randn(2, 1, 9, 30, 31)
    with torch.no_grad():
        a, b, single = net(x), net(x), net(x[1:])
    assert torch.equal(a, b)
    torch.testing.assert_close(a[1:], single, rtol=1e-5, atol=1e-5)


def test_training_mode_uses_stochastic_depth():
    net = _tiny(TINY_3D, drop_path_rate=0.5).train()
    x = torch.randn(2, 1, 5, 16, 16)
    torch.manual_seed(1)
    a = net(x)
    torch.manual_seed(2)
    b = net(x)
    assert not torch.equal(a, b)


def test_windows_do_not_mix_tokens_across_windows():
    # one stage, one unshifted block, window 4: perturbing one token must only change its own window
    net = _tiny(TINY_3D, depths=(1, 1), num_heads=(1, 1), window_size=(4, 4), patch_size=1).eval()
    block = net.encoder[0].blocks[0]
    x = torch.randn(1, 8, 8, 8, 8)
    y = x.clone()
    y[0, 0, 0, 0] += 1.0
    with torch.no_grad():
        diff = (block(x) - block(y)).abs().sum(-1)
    assert diff[:4, :4, :4].sum() > 0
    changed = diff > 1e-6
    changed[:4, :4, :4] = False
    assert not changed.any()


# --------------------------------------------------------------------------- window helpers


def test_window_partition_roundtrip_and_relative_index():
    x = torch.randn(2, 4, 6, 8, 3)
    windows = _window_partition(x, (2, 3, 4))
    assert windows.shape == (2 * 2 * 2 * 2, 24, 3)
    assert torch.equal(_window_reverse(windows, (2, 3, 4), (4, 6, 8), 2), x)
    index = _relative_position_index((2, 3, 4), (2, 3, 4))
    # injective: every distinct 3D offset gets its own entry, all entries are used
    assert index.unique().numel() == (2 * 2 - 1) * (2 * 3 - 1) * (2 * 4 - 1)
    # a shrunken window indexes a subset of the same table
    small = _relative_position_index((1, 2, 2), (2, 3, 4))
    assert set(small.unique().tolist()) <= set(index.unique().tolist())


def test_shift_mask_separates_regions():
    mask = _shift_mask((8, 8), (4, 4), (2, 2))
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the first window is one region
    assert (mask[-1] != 0).any()  # the last one mixes wrapped regions


def test_relative_position_tables_do_not_depend_on_input_size():
    net = _tiny(TINY_3D)
    before = {n: p.shape for n, p in net.named_parameters()}
    net.eval()
    with torch.no_grad():
        net(torch.randn(1, 1, 3, 5, 7))
        net(torch.randn(1, 1, 40, 70, 70))
    assert {n: p.shape for n, p in net.named_parameters()} == before
    table = net.encoder[2].blocks[0].attn.relative_position_bias_table
    assert table.shape == (15**3, 2)


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(num_heads=(3, 2, 2, 4)), "does not divide"),
        (dict(window_size=(4, 4, 64, 4)), "larger than the allowed"),
        (dict(window_size=(4, 4, 0, 4)), "must be ≥ 1"),
        (dict(window_size=(4, 4, 8)), "one per stage"),
        (dict(num_heads=(1, 2)), "one per stage"),
        (dict(embed_dim=7, num_heads=(1, 1, 1, 1)), "even"),
        (dict(patch_size=(3, 4, 4)), "patch_size"),
        (dict(spatial_dims=4), "spatial_dims"),
        (dict(in_channels=0), "in_channels"),
        (dict(depths=(2,), num_heads=(1,), window_size=(4,)), "at least 2 stages"),
    ],
)
def test_invalid_arguments_raise_with_reason(overrides, match):
    with pytest.raises(ValueError, match=match):
        NNFormer(**{**TINY_3D, **overrides})


def test_2d_rejects_3d_window_with_depth():
    with pytest.raises(ValueError, match="z = 1"):
        NNFormer(**{**TINY_2D, "window_size": ((2, 8, 8),) * 4})
    # a 3-tuple with z = 1 is accepted
    NNFormer(**{**TINY_2D, "window_size": ((1, 8, 8),) * 4, "patch_size": (1, 4, 4)})


def test_wrong_input_at_call_time_raises_with_reason():
    net = _tiny(TINY_3D).eval()
    with pytest.raises(ValueError, match="built for 1 input channel"):
        net(torch.randn(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="5-D input"):
        net(torch.randn(1, 1, 8, 8))


def test_build_model_unknown_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match="nnformer-liver-3d"):
        build_model("nnformer-huge")


# --------------------------------------------------------------------------- registry


def test_synapse_parameter_count_matches_the_paper():
    # built on the meta device: no memory, no time
    with torch.device("meta"):
        net = build_model("nnformer-synapse")
    assert abs(_params(net) - 150.05e6) / 150.05e6 < 0.005


def test_registry_has_the_required_configurations():
    for name in ("nnformer-synapse", "nnformer-brats", "nnformer-liver-3d", "nnformer-liver-3d-coarse",
                 "nnformer-liver-2d"):
        assert name in MODEL_CONFIGS and name in MODEL_INPUT_SIZES
    with torch.device("meta"):
        liver = build_model("nnformer-liver-3d")
        assert 1e6 <= _params(liver) <= 5e6
        assert _params(build_model("nnformer-brats")) > _params(liver)
        assert build_model("nnformer-liver-2d").spatial_dims == 2


def test_build_model_applies_overrides_and_keeps_registry_intact():
    with torch.device("meta"):
        net = build_model("nnformer-liver-3d", in_channels=2, num_classes=5, deep_supervision=True)
    assert (net.in_channels, net.num_classes, net.deep_supervision) == (2, 5, True)
    assert MODEL_CONFIGS["nnformer-liver-3d"]["num_classes"] == 3


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_every_registered_configuration_runs_forward_and_backward_on_odd_sizes(name):
    # the registered structure (windows, strides, stages) at a tiny width
    cfg = MODEL_CONFIGS[name]
    n = len(cfg["depths"])
    torch.manual_seed(0)
    net = build_model(name, embed_dim=4, num_heads=(1,) * n, deep_supervision=True).train()
    size = (9, 11) if cfg["spatial_dims"] == 2 else (5, 9, 11)
    outs = net(torch.randn(1, cfg["in_channels"], *size))
    assert outs[0].shape == (1, cfg["num_classes"], *size)
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None for p in net.parameters())


# --------------------------------------------------------------------------- ONNX


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:Constant folding:UserWarning")
@pytest.mark.parametrize("name,size", [("nnformer-liver-3d", (9, 37, 41)), ("nnformer-liver-3d-coarse", (7, 13, 11)),
                                       ("nnformer-liver-3d-refine", (9, 37, 41)), ("nnformer-liver-2d", (37, 41))])
def test_onnx_export_matches_pytorch(name, size, tmp_path):
    """The registered small structures (at a tiny width) export and run in onnxruntime within 1e-4 (relative)."""
    ort = pytest.importorskip("onnxruntime")
    n = len(MODEL_CONFIGS[name]["depths"])
    torch.manual_seed(0)
    net = build_model(name, embed_dim=8, num_heads=(1,) * n).eval()
    x = torch.randn(1, 1, *size)
    path = tmp_path / "model.onnx"
    # the legacy (TorchScript) exporter; the graph is specialised to this input size, which is
    # what a sliding-window predictor feeds
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["logits"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        torch_out = net(x).numpy()
    assert onnx_out.shape == torch_out.shape == (1, 3, *size)
    # float32 rounding: within 1e-4 of the logits' scale (deeper heads add more rounding steps)
    assert abs(onnx_out - torch_out).max() < 1e-4 * max(1.0, float(abs(torch_out).max()))


def test_refine_head_loads_weights_that_still_hold_the_unused_plain_head():
    net = _tiny(TINY_3D, refine_head=True)
    state = net.state_dict()
    state["heads.0.weight"] = torch.zeros(16, 3, 2, 4, 4)  # saved by a version that kept it unused
    state["heads.0.bias"] = torch.zeros(3)
    other = _tiny(TINY_3D, refine_head=True)
    other.load_state_dict(state)  # strict: only the stale head's keys are dropped
    with pytest.raises(RuntimeError, match="Unexpected"):
        other.load_state_dict({**state, "nonsense.weight": torch.zeros(1)})
