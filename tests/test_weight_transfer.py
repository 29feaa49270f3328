"""Pre-trained weights independent of the channel count and patch size (issue 13, part 2).

Each test fails on the old behaviour, where any other input channel count, patch size or a plain SwinUNETR
state dict was a shape-mismatch / not-a-checkpoint error.
"""
import logging

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR

from pirl_pipeline.checkpoint import load_checkpoint, load_pretrained, transfer_weights
from pirl_pipeline.cli.plan_and_preprocess import main as plan_main
from pirl_pipeline.cli.train import main as train_main
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.networks import PIRLNet
from pirl_pipeline.networks.transfer import head_rows_by_name, swinunetr_state
from tests.synthetic import MRI4, pirl_roots, write_raw_dataset

torch.set_num_threads(1)
TINY = ["--epochs", "1", "--iters", "1", "--val-iters", "1", "--batch-size", "1", "-npa", "0", "-device", "cpu",
        "--set", "augment=false"]


def pirl(in_channels: int, patch: int = 64, feature_size: int = 12, seed: int = 0, **kw) -> PIRLNet:
    torch.manual_seed(seed)
    return PIRLNet(in_channels, kw.pop("out_channels", in_channels), (patch,) * 3, feature_size, **kw).eval()


def test_stem_summed_over_input_channels_gives_the_same_features_for_a_repeated_modality():
    source, target = pirl(4), pirl(2, seed=1)
    fresh = target.state_dict()
    kept = transfer_weights(target, source.state_dict(), "src.pth", head_rows=[3, None])
    assert kept == []  # every tensor comes from the source, only output row 1 (no source row) is fresh
    assert torch.equal(target.out.conv.conv.weight[0], source.out.conv.conv.weight[3])
    assert torch.equal(target.out.conv.conv.weight[1], fresh["out.conv.conv.weight"][1])
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        a, b = x.repeat(1, 4, 1, 1, 1), x.repeat(1, 2, 1, 1, 1)
        for ha, hb in zip(source.swinViT(a, normalize=True), target.swinViT(b, normalize=True)):
            torch.testing.assert_close(ha, hb, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(source.encoder1(a), target.encoder1(b), rtol=1e-5, atol=1e-5)


def test_prior_resampled_to_another_patch_size(caplog):
    source, target = pirl(2, 64), pirl(2, 96, seed=1)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="pirl"):
        kept = transfer_weights(target, source.state_dict(), "src.pth")
    expected = F.interpolate(source.prior[None], size=(3, 3, 3), mode="trilinear", align_corners=False)[0]
    assert torch.equal(target.prior, expected)
    assert kept and all(k.startswith("prior_fusion.attn.") for k in kept)  # its embedding is the grid volume
    assert all(torch.equal(target.state_dict()[k], fresh[k]) for k in kept)
    assert torch.equal(target.prior_fusion.fuse.weight, source.prior_fusion.fuse.weight)
    assert "prior O resampled (trilinear) from grid (2, 2, 2) to (3, 3, 3)" in caplog.text


def test_plain_swinunetr_state_dict_as_pretrained(tmp_path):
    torch.manual_seed(2)
    swin = SwinUNETR(in_channels=1, out_channels=3, feature_size=12)
    path = tmp_path / "swin.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in swin.state_dict().items()}}, path)
    source = load_pretrained(path)
    assert source.network_kwargs is None and source.feature_size == 12
    target = pirl(2, out_channels=3, seed=1)
    fresh_prior = target.prior.detach().clone()
    kept = transfer_weights(target, source.weights, str(path), head_rows=[None] * 3)
    assert {k.split(".")[0] for k in kept} == {"prior_fusion", "equivariance_head", "projection_head", "out"}
    assert torch.equal(target.prior, fresh_prior)
    key = "swinViT.layers3.0.blocks.1.attn.qkv.weight"
    assert torch.equal(target.state_dict()[key], swin.state_dict()[key])
    stem = "swinViT.patch_embed.proj.weight"
    torch.testing.assert_close(target.state_dict()[stem].sum(1), swin.state_dict()[stem].sum(1))


def test_monai_self_supervised_swin_weights_read_as_monai_reads_them():
    """Tang et al.'s model_swinvit.pt layout (module.patch_embed..., mlp.fc1): our reading equals MONAI's
    SwinUNETR.load_from; the decoder then starts fresh."""
    torch.manual_seed(3)
    swin = SwinUNETR(in_channels=1, out_channels=2, feature_size=12)
    legacy = {"module." + k.removeprefix("swinViT.").replace("mlp.linear1", "mlp.fc1").replace("mlp.linear2", "mlp.fc2"): v
              for k, v in swin.state_dict().items() if k.startswith("swinViT.")}
    legacy["module.rotation_head.weight"] = torch.zeros(4, 192)
    monai_read = SwinUNETR(in_channels=1, out_channels=2, feature_size=12)
    monai_read.load_from({"state_dict": legacy})
    ours = swinunetr_state({"state_dict": legacy})
    assert set(ours) == {k for k in monai_read.state_dict() if k.startswith("swinViT.")}
    assert all(torch.equal(v, monai_read.state_dict()[k]) for k, v in ours.items())
    target = pirl(2, seed=1)
    kept = transfer_weights(target, ours, "model_swinvit.pt")
    assert "decoder1.conv_block.conv1.conv.weight" in kept and not any(k.startswith("swinViT.") for k in kept)


def test_mismatches_that_cannot_be_adapted_list_the_keys(tmp_path):
    with pytest.raises(PirlInputError, match=r"src\.pth: pretrained weights do not fit.*shape mismatch.*swinViT"):
        transfer_weights(pirl(2), pirl(2, feature_size=24).state_dict(), "src.pth")
    partial = {k: v for k, v in pirl(2).state_dict().items() if k != "decoder1.conv_block.conv1.conv.weight"}
    with pytest.raises(PirlInputError, match=r"missing key\(s\): decoder1\.conv_block\.conv1\.conv\.weight"):
        transfer_weights(pirl(2), partial, "src.pth")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "foreign.pt")
    with pytest.raises(PirlInputError, match=r"foreign\.pt: neither a pirl checkpoint nor a SwinUNETR state dict"):
        load_pretrained(tmp_path / "foreign.pt")


def test_output_rows_matched_by_modality_name():
    assert head_rows_by_name(["FLAIR", "T1c", "PET"], ["T1", "T1ce", "T2", "FLAIR"]) == [3, 1, None]
    assert head_rows_by_name(["t2f", "T1Gd", "t1n", "T2w"], list(MRI4.values())) == [3, 1, 0, 2]


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """A 4-channel dataset (T1, T1ce, T2, FLAIR) and a 2-channel one (FLAIR, T1c), preprocessed."""
    root = tmp_path_factory.mktemp("transfer")
    with pirl_roots(root):
        write_raw_dataset(root / "raw", 941, "Four", num_cases=2, shape=(40, 44, 42))
        write_raw_dataset(root / "raw", 942, "Two", num_cases=3, shape=(40, 44, 42),
                          channels={"0": "FLAIR", "1": "T1c"})
        for dataset in ("941", "942"):
            assert plan_main(["-d", dataset, "-np", "1"]) == 0
        yield root


@pytest.mark.slow
def test_four_channel_pretraining_fine_tunes_two_channels_and_a_larger_patch(two_datasets, caplog):
    """Through the CLI: a 4-channel 64^3 pre-training checkpoint (written by the pre-trainer, one step at lr 0: the
    pre-training loop is test_training_e2e's) -> seg on FLAIR + T1c, and translation trained on a larger patch
    (96 x 64 x 64, for speed: the prior resampling is test_prior_resampled_to_another_patch_size's 96^3 too;
    output head by modality name)."""
    res = two_datasets / "res"
    frozen = ["--set", "lr=0", "health_subjects=0"]  # one step at lr 0: the weights as initialised / transferred
    assert train_main(["941", "3d_fullres", "pretrain", *TINY, "--val-iters", "0",
                       "--patch-size", "64", "64", "64", "--feature-size", "12", *frozen]) == 0
    ckpt = res / "Dataset941_Four" / "PIRLPretrainer__PIRLPlans__3d_fullres" / "fold_all" / "checkpoint_final.pth"
    pre = load_checkpoint(ckpt)["network_weights"]
    with caplog.at_level(logging.INFO, logger="pirl"):
        assert train_main(["942", "3d_fullres", "seg", "--pretrained", str(ckpt), *TINY, *frozen,
                           "val_volumes=false"]) == 0
    seg = load_checkpoint(res / "Dataset942_Two" / "PIRLSegTrainer__PIRLPlans__3d_fullres" / "fold_0" /
                          "checkpoint_final.pth")
    assert seg["network_kwargs"]["in_channels"] == 2 and seg["network_kwargs"]["patch_size"] == [64, 64, 64]
    assert seg["config"]["pretrained"] == str(ckpt.resolve())
    # the default fusion "joint" reads each modality in its own channel: FLAIR and T1c take their own kernels
    assert "input stem mapped by modality" in caplog.text
    stem = "swinViT.patch_embed.proj.weight"
    four, two = pre[stem], seg["network_weights"][stem]  # source channels T1, T1ce, T2, FLAIR; lr 0
    assert torch.equal(two[:, 0], four[:, 3]) and torch.equal(two[:, 1], four[:, 1])
    key = "swinViT.layers2.0.blocks.0.attn.qkv.weight"
    assert torch.equal(seg["network_weights"][key], pre[key])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pirl"):
        assert train_main(["942", "3d_fullres", "translate", "--pretrained", str(ckpt), *TINY[:-2], "--val-iters",
                           "0", "--patch-size", "96", "64", "64", "--set", "augment=false", "lr=0",
                           "val_volumes=false"]) == 0
    state = load_checkpoint(res / "Dataset942_Two" / "PIRLTranslateTrainer__PIRLPlans__3d_fullres" / "fold_0" /
                            "checkpoint_final.pth")
    out = state["network_weights"]
    assert state["history"][0]["train/translate"] > 0  # one real training step on the larger patch
    assert "output head by modality name: FLAIR <- FLAIR, T1c <- T1ce" in caplog.text
    assert "prior O resampled (trilinear) from grid (2, 2, 2) to (3, 2, 2)" in caplog.text
    assert out["prior_fusion.prior"].shape == (192, 3, 2, 2)
    # lr 0: the trained weights are the adapted ones (AdamW's weight decay is lr-scaled too)
    assert torch.equal(out["out.conv.conv.weight"], pre["out.conv.conv.weight"][[3, 1]])
    torch.testing.assert_close(out[stem], pre[stem][:, [3, 1]])  # joint stem: FLAIR <- FLAIR, T1c <- T1ce
