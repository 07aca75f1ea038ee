"""The feature engine's choice without ONNX Runtime installed."""

from __future__ import annotations

import pytest
import torch

from graftkit.errors import GraftError


def test_onnx_engine_without_onnxruntime_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from graftkit.train import engines

    monkeypatch.setattr(engines, "available", lambda: False)
    with pytest.raises(GraftError, match=r"graftkit\[export\]"):
        engines.check("onnx")
    engines.check("auto")  # auto falls back to torch
    assert engines.choose("auto", torch.device("cpu"), None, 10**6, "d", "s") == "torch"


class _Resized(torch.nn.Module):
    """A backbone whose antialiased resize TorchScript's ONNX exporter does not support."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.interpolate(x, size=(4, 4), mode="bilinear", antialias=True)
        return y.flatten(1)


class _Plain(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 2.0).mean((2, 3))


@pytest.mark.parametrize(("module", "exporter"), [(_Plain(), "torchscript"),
                                                  (_Resized(), "dynamo")])
def test_export_falls_back_to_torch_export(module: torch.nn.Module, exporter: str,
                                           tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from graftkit.modalities.base import ExportSignature
    from graftkit.train import engines

    sig = ExportSignature(module=module.eval(), example=(torch.rand(2, 3, 8, 8),),
                          inputs=[{"name": "image", "shape": ["batch", 3, 8, 8]}],
                          feeds=lambda b: (b,))
    info = engines._export(sig, ["image"], tmp_path / "e.onnx", tmp_path / "e.json")
    assert info["ok"] and info["exporter"] == exporter and info["parity_max_abs"] <= 1e-4
    run = engines._runner(engines._session(tmp_path / "e.onnx"), ["image"], sig.feeds)
    x = torch.rand(5, 3, 8, 8)  # another batch size than the example's
    assert torch.allclose(run(x), module(x), atol=1e-5)


def test_static_padding_pads_as_timm_does_and_is_undone() -> None:
    import timm
    from timm.layers.conv2d_same import Conv2dSame

    from graftkit.models.base import static_padding

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    convs = [m for m in net.modules() if isinstance(m, Conv2dSame)]
    assert convs  # TF 'same' padding: the stride-2 convolutions
    x = torch.rand(3, 3, 96, 96)
    with torch.no_grad():
        want = net(x)
        with static_padding(net, (x[:2],)):
            assert all("forward" in c.__dict__ for c in convs)
            got = net(x)
    assert torch.equal(got, want)
    assert not any("forward" in c.__dict__ for c in convs)  # timm's own forward again


def test_auto_exports_from_the_modalitys_size(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """An image extraction of 200 inputs repays a first export; a text one needs 8,000."""
    from types import SimpleNamespace

    from graftkit.train import engines

    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path))  # no engine exported yet
    monkeypatch.setattr(engines, "available", lambda: True)
    monkeypatch.setattr(engines, "engine_key", lambda d, s: "k")
    cpu = torch.device("cpu")
    for modality, small, large in (("image", 199, 200), ("text", 7999, 8000)):
        least = engines.min_inputs(SimpleNamespace(modality=modality))
        assert least == large
        assert engines.choose("auto", cpu, None, small, "d", "s", min_inputs=least) == "torch"
        assert engines.choose("auto", cpu, None, large, "d", "s", min_inputs=least) == "onnx"
        # several processes never export; bf16 autocast keeps torch
        assert engines.choose("auto", cpu, None, large, "d", "s", export=False,
                              min_inputs=least) == "torch"
        assert engines.choose("auto", cpu, torch.bfloat16, large, "d", "s",
                              min_inputs=least) == "torch"
    # an engine exported but refused by its parity check is not chosen again
    (tmp_path / "engines").mkdir(exist_ok=True)
    monkeypatch.setattr(engines, "engine_dir", lambda: tmp_path / "engines")
    (tmp_path / "engines" / "k.onnx").write_bytes(b"")
    assert engines.choose("auto", cpu, None, 10, "d", "s") == "onnx"  # exported: reused
    (tmp_path / "engines" / "k.json").write_text('{"ok": false, "reason": "parity"}')
    assert engines.choose("auto", cpu, None, 10, "d", "s") == "torch"
