"""PIRLNet: shapes, gradients, prior on/off, SwinUNETR weight exchange, modality paths, determinism."""

import pytest
import torch
from monai.networks.nets import SwinUNETR

from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.networks import PIRLNet, attention_heads, repeat_modality

SMALL = {"feature_size": 12, "depths": (1, 1, 1, 1), "proj_dim": 16, "window_size": 4}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    ("patch", "fs", "cin", "cout", "window"),
    [((64, 64, 64), 12, 4, 4, 7), ((64, 32, 32), 12, 2, 3, 4), ((32, 32, 64), 24, 1, 2, 4)],
)
def test_shapes(patch, fs, cin, cout, window):
    torch.manual_seed(0)
    net = PIRLNet(cin, cout, patch, feature_size=fs, depths=(1, 1, 1, 1), window_size=window, proj_dim=16,
                  num_transforms=8)  # fmt: skip
    with torch.no_grad():
        out = net(torch.randn(2, cin, *patch), views=torch.randn(4, cin, *patch))
    grid = (2, 16 * fs, *(p // 32 for p in patch))
    assert out.z.shape == grid and out.x_h.shape == grid
    assert out.output.shape == (2, cout, *patch)
    assert out.equ_logits.shape == (2, 8) and out.proj.shape == (2, 16) and out.view_proj.shape == (4, 16)
    assert net.prior.shape == grid[1:]


def test_flags_skip_decoder_and_heads():
    net = PIRLNet(2, 2, (64, 32, 32), **SMALL)
    with torch.no_grad():
        out = net(torch.randn(1, 2, 64, 32, 32), decode=False, heads=False)
    assert out.output is None and out.equ_logits is None and out.proj is None and out.x_h is not None


def test_attention_head_rule():
    assert attention_heads(27, 3) == 3  # 96^3
    assert attention_heads(8, 3) == 2  # 64^3
    assert attention_heads(8, 4) == 4
    assert attention_heads(1, 3) == 1  # 32^3
    assert attention_heads(2, 3) == 2  # 64x32x32
    assert PIRLNet(2, 2, (64, 64, 64), **SMALL).prior_fusion.num_heads == 2


def test_32_cube_needs_a_norm_that_works_on_one_voxel():
    """At 32^3 the bottleneck is 1x1x1: instance norm fails there (in SwinUNETR too), group norm works."""
    net = PIRLNet(2, 2, (32, 32, 32), norm_name=("group", {"num_groups": 3}), **SMALL)
    out = net(torch.randn(1, 2, 32, 32, 32))
    out.output.mean().backward()
    assert out.output.shape == (1, 2, 32, 32, 32) and net.prior.grad is not None


def _all_losses(out):
    return out.output.square().mean() + out.equ_logits.square().mean() + out.proj.square().mean()


def test_gradients_reach_prior_encoder_decoder_and_heads():
    torch.manual_seed(0)
    net = PIRLNet(2, 2, (64, 32, 32), **SMALL)
    x = torch.randn(1, 2, 64, 32, 32)
    out = net(x, views=torch.randn(1, 2, 64, 32, 32))
    (_all_losses(out) + out.view_proj.square().mean()).backward()
    names = [
        "prior_fusion.prior", "prior_fusion.attn.in_proj_weight", "prior_fusion.transform.0.weight",
        "prior_fusion.fuse.weight", "swinViT.patch_embed.proj.weight", "swinViT.layers4.0.blocks.0.attn.qkv.weight",
        "encoder1.layer.conv1.conv.weight", "encoder10.layer.conv1.conv.weight", "decoder1.transp_conv.conv.weight",
        "out.conv.conv.weight", "equivariance_head.fc.weight", "projection_head.mlp.2.weight",
    ]  # fmt: skip
    for name in names:
        grad = dict(net.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_views_without_gradient():
    net = PIRLNet(2, 2, (64, 32, 32), **SMALL)
    out = net(torch.randn(1, 2, 64, 32, 32), views=torch.randn(2, 2, 64, 32, 32), view_grad=False)
    assert out.proj.requires_grad and not out.view_proj.requires_grad


def test_without_prior_O_is_absent():
    torch.manual_seed(0)
    net = PIRLNet(2, 2, (64, 32, 32), use_prior=False, **SMALL)
    assert net.prior is None and net.prior_fusion is None
    assert not any(k.startswith("prior") for k in net.state_dict())
    out = net(torch.randn(1, 2, 64, 32, 32))
    assert out.x_h is out.z
    _all_losses(out).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_swinunetr_weight_round_trip():
    torch.manual_seed(0)
    net = PIRLNet(2, 3, (64, 32, 32), **SMALL)
    swin = SwinUNETR(**net.swinunetr_kwargs())
    swin.load_state_dict(net.to_swinunetr_state_dict(), strict=True)  # PIRLNet -> SwinUNETR
    for k, v in swin.state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k
    torch.manual_seed(1)
    swin2 = SwinUNETR(**net.swinunetr_kwargs())
    back = PIRLNet.from_swinunetr(swin2, **net.config)  # SwinUNETR -> PIRLNet
    assert set(back.to_swinunetr_state_dict()) == set(swin2.state_dict())
    SwinUNETR(**net.swinunetr_kwargs()).load_state_dict(back.to_swinunetr_state_dict(), strict=True)
    for k, v in swin2.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    with pytest.raises(KeyError):
        net.load_swinunetr_state_dict({k: v for k, v in swin2.state_dict().items() if not k.startswith("out.")})


def test_without_prior_equals_swinunetr():
    torch.manual_seed(0)
    swin = SwinUNETR(2, 2, feature_size=12, depths=(1, 1, 1, 1), window_size=4).eval()
    net = PIRLNet.from_swinunetr(swin, in_channels=2, out_channels=2, patch_size=(64, 32, 32), use_prior=False,
                                 feature_size=12, depths=(1, 1, 1, 1), window_size=4).eval()  # fmt: skip
    x = torch.randn(1, 2, 64, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x).output, swin(x), atol=1e-5)


def test_from_plans_reads_every_planner_key_and_refuses_unknown_ones():
    block = {"architecture": "PIRLNet", "explanation": "small", "feature_size": 24, "depths": [1, 1, 1, 1],
             "num_heads": [3, 6, 12, 24], "prior_attention_heads": 2, "use_prior": True}  # fmt: skip
    net = PIRLNet.from_plans(block, 4, 3, [64, 64, 32], proj_dim=8)
    assert net.config["feature_size"] == 24 and net.use_prior and net.patch_size == (64, 64, 32)
    assert net.config["attn_heads"] == 2 and tuple(net.config["depths"]) == (1, 1, 1, 1)  # the plans' names
    assert PIRLNet(**net.config).config == net.config
    with pytest.raises(PirlInputError, match="attn_heads"):  # the constructor's name is not a plans key
        PIRLNet.options_from_plans({**block, "attn_heads": 2})


def test_planner_block_builds_the_default_network():
    from plans.planner import network_block

    options = PIRLNet.options_from_plans(network_block([64, 64, 64], 12))
    default = PIRLNet(4, 4, (64, 64, 64), 12).config
    assert all(default[k] == (list(v) if isinstance(default[k], list) else v) for k, v in options.items())


def test_prior_requires_the_built_patch_size():
    net = PIRLNet(2, 2, (64, 32, 32), **SMALL)
    with pytest.raises(ValueError, match="prior grid fixes"), torch.no_grad():
        net(torch.randn(1, 2, 64, 64, 64))


def test_modality_paths():
    torch.manual_seed(0)
    net = PIRLNet(3, 3, (64, 32, 32), **SMALL).eval()
    x = torch.randn(2, 3, 64, 32, 32)
    available = torch.tensor([[True, False, True], [False, True, False]])
    with torch.no_grad():
        fused = net(x, available=available)
        per_pair = net(x, available=available, fuse=False)
        single = net(repeat_modality(x, 1, net.in_channels))  # modality 1 alone in every input channel
        subset = net.encode_modalities(x, [1])
    assert fused.output.shape == (2, 3, 64, 32, 32) and fused.x_h_modalities.shape[0] == 3
    assert fused.owner.tolist() == [0, 0, 1] and per_pair.output.shape == (3, 3, 64, 32, 32)
    assert torch.allclose(fused.x_h[0], fused.x_h_modalities[:2].mean(0), atol=1e-6)
    # a subject with a single modality gets exactly that modality's result
    assert torch.allclose(fused.output[1], per_pair.output[2], atol=1e-5)
    assert torch.allclose(subset.output, single.output, atol=1e-5)
    assert torch.equal(repeat_modality(x, 2, 3)[:, 1], x[:, 2])
    with pytest.raises(ValueError, match="at least one"):
        net(x, available=torch.tensor([[True, False, False], [False, False, False]]))


def test_determinism_under_seed():
    x = torch.randn(1, 2, 64, 32, 32)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        net = PIRLNet(2, 2, (64, 32, 32), **SMALL)
        with torch.no_grad():
            outs.append(net(x))
    assert torch.equal(outs[0].output, outs[1].output) and torch.equal(outs[0].proj, outs[1].proj)


def test_fused_attention_and_checkpointing_leave_the_weights_exchangeable():
    """The speed options change how the Swin blocks run, not their parameters: a plain MONAI SwinUNETR (no
    flags) loads the weights, and a checkpoint's network description from before the option still builds."""
    from pirl_pipeline.networks.factory import build_network

    torch.manual_seed(0)
    net = PIRLNet(2, 3, (64, 32, 32), use_flash_attention=True, use_checkpoint=True, **SMALL).eval()
    swin = SwinUNETR(2, 3, feature_size=12, depths=(1, 1, 1, 1), window_size=4).eval()
    swin.load_state_dict(net.to_swinunetr_state_dict(), strict=True)
    old = {"kind": "pirl", **{k: v for k, v in net.config.items() if k != "use_flash_attention"}}
    plain = build_network(old).eval()
    plain.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(1, 2, 64, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x).output, plain(x).output, atol=1e-5)
