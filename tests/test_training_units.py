"""Trainer building blocks: config overrides, checkpoints, weight transfer, trainer registry."""
import json

import pytest
import torch

from pirl_pipeline.checkpoint import load_checkpoint, save_checkpoint, transfer_weights
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.networks.factory import build_network, create
from pirl_pipeline.trainer_config import TrainerConfig
from pirl_pipeline.training.downstream import random_subsets
from pirl_pipeline.training.registry import resolve_trainer


def test_config_overrides_parse_types_and_reject_unknown():
    config = TrainerConfig(task="seg").with_overrides(["lr=0.001", "augment=false", "patch_size=64,64,96",
                                                       "disabled=prior,contrastive"])
    assert config.lr == 1e-3 and config.augment is False and config.patch_size == [64, 64, 96]
    assert config.use_prior is False  # switching off the prior ablation removes O
    with pytest.raises(PirlInputError, match="FIELD=VALUE"):
        config.with_overrides(["nonsense=1"])
    with pytest.raises(PirlInputError, match="multiple of 32"):
        TrainerConfig(patch_size=[64, 64, 50])
    with pytest.raises(PirlInputError, match="multiple of 12"):
        TrainerConfig(feature_size=16)
    with pytest.raises(PirlInputError, match="unknown ablation"):
        TrainerConfig(disabled=["magic"])
    assert TrainerConfig.from_dict(config.to_dict()) == config
    typed = config.with_overrides(["num_workers=none", "batch_size=3", "class_weight_max=1.5", "lr_schedule=poly"])
    assert (typed.num_workers, typed.batch_size, typed.class_weight_max, typed.lr_schedule) == (None, 3, 1.5, "poly")
    for bad, why in (("lr=fast", "lr takes float"), ("batch_size=1.5", "batch_size takes int | None"),
                     ("amp=maybe", "expected a boolean")):
        with pytest.raises(PirlInputError, match=why):
            config.with_overrides([bad])


def test_checkpoint_round_trip_and_corruption(tmp_path):
    state = {"network_weights": {"w": torch.ones(2)}, "trainer_name": "X", "network_kwargs": {"kind": "dynunet"},
             "config": {}, "plans": {}, "epoch": 3}
    save_checkpoint(state, tmp_path / "c.pth")
    assert load_checkpoint(tmp_path / "c.pth")["epoch"] == 3
    data = (tmp_path / "c.pth").read_bytes()
    (tmp_path / "partial.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(PirlInputError, match=r"partial\.pth: corrupt or partially written"):
        load_checkpoint(tmp_path / "partial.pth")
    torch.save({"weights": 1}, tmp_path / "foreign.pth")
    with pytest.raises(PirlInputError, match="not a pirl checkpoint"):
        load_checkpoint(tmp_path / "foreign.pth")
    with pytest.raises(PirlInputError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pth")


def test_transfer_weights_reinitialises_only_the_head():
    source, _ = create("dynunet", 4, 4, [64, 64, 64], 12)
    target, description = create("dynunet", 4, 3, [64, 64, 64], 12)
    reinit = transfer_weights(target, source.state_dict(), "src.pth", reinit_prefixes=("output_block.",))
    assert reinit and all(k.startswith("output_block.") for k in reinit)
    key = "input_block.conv1.conv.weight"
    assert torch.equal(target.state_dict()[key], source.state_dict()[key])
    other_channels, _ = create("dynunet", 2, 3, [64, 64, 64], 12)
    with pytest.raises(PirlInputError, match=r"src\.pth: .*shape mismatch.*input_block"):
        transfer_weights(other_channels, source.state_dict(), "src.pth", reinit_prefixes=("output_block.",))
    assert isinstance(build_network(description), type(target))


def test_random_subsets_are_non_empty_and_cover_all():
    torch.manual_seed(0)
    subsets = random_subsets(2000, 4)
    assert subsets.any(1).all()
    assert len({tuple(s.tolist()) for s in subsets}) == 15


def test_full_modality_share_keeps_every_modality_a_case_has_in_that_share():
    torch.manual_seed(0)
    uniform = random_subsets(4000, 4).all(1).float().mean().item()
    torch.manual_seed(1)
    default = random_subsets(50, 4)
    torch.manual_seed(1)
    assert torch.equal(default, random_subsets(50, 4, keep_all=0.0))  # share 0: the same draws as before
    half = random_subsets(4000, 4, keep_all=0.5).all(1).float().mean().item()
    assert abs(uniform - 1 / 15) < 0.02 and abs(half - (0.5 + 0.5 / 15)) < 0.03
    present = torch.tensor([[True, False, True, True]] * 1000)
    subsets = random_subsets(1000, 4, present=present, keep_all=1.0)
    assert torch.equal(subsets, present)  # never a modality the case does not have
    with pytest.raises(PirlInputError, match="full_modality_share"):
        TrainerConfig(task="seg", full_modality_share=1.5)


def test_registry_checks_task():
    assert resolve_trainer("seg", None) == "PIRLSegTrainer"
    with pytest.raises(PirlInputError, match="is for task 'seg'"):
        resolve_trainer("translate", "SwinUNETRSegTrainer")
    with pytest.raises(PirlInputError, match="unknown trainer"):
        resolve_trainer("seg", "Nope")


def test_a_description_saved_before_an_argument_existed_is_the_same_network(tmp_path):
    """fa48cdf added decoder_skips (default 5) to every PIRLNet description; a checkpoint without it describes
    the same network: factory.canonical fills constructor defaults on both sides of the resume check and of
    model_identity (folds from before and after combine)."""
    from pirl_pipeline.checkpoint import check_same_model, model_identity
    from pirl_pipeline.cli.train import check_resumable
    from pirl_pipeline.networks.factory import canonical

    _, new = create("pirl", 2, 3, [32, 32, 32], 12, depths=(1, 1, 1, 1), window_size=4)
    old = {k: v for k, v in new.items() if k != "decoder_skips"}
    assert new["decoder_skips"] == 5 and old != new and canonical(old) == canonical(new)
    check_resumable(new, old, tmp_path / "checkpoint_latest.pth")  # accepted
    with pytest.raises(PirlInputError, match=r"checkpoint_latest\.pth: its network differs .*\(decoder_skips\)"):
        check_resumable({**new, "decoder_skips": 3}, old, tmp_path / "checkpoint_latest.pth")
    state = {"trainer_name": "PIRLSegTrainer", "config": {"task": "seg"}, "plans": {}, "dataset_json": {}}
    assert model_identity({**state, "network_kwargs": old}) == model_identity({**state, "network_kwargs": new})
    check_same_model(tmp_path / "a.pth", {**state, "network_kwargs": old}, tmp_path / "b.pth",
                     {**state, "network_kwargs": new})
    for kind in ("swinunetr", "dynunet"):  # every kind: its own constructor's defaults; tuples equal lists
        _, description = create(kind, 2, 3, [32, 32, 32], 12)
        full = canonical(description)
        assert full["kind"] == kind and full == canonical(json.loads(json.dumps(description)))
        assert "drop_rate" in full if kind == "swinunetr" else full["deep_supervision"] is False
    assert canonical({"kind": "resnet"}) == {"kind": "resnet"}  # unknown: left for build_network to refuse


def test_config_bounds_the_cli_checks_hold_for_any_config():
    """seed and num_workers are bounded in TrainerConfig too (a config.json, --set), as --seed and -npa are;
    lr=0 stays allowed (a run that keeps its weights)."""
    for bad, why in (({"seed": -1}, "seed must be a whole number in"), ({"seed": 2**32}, "seed must be"),
                     ({"seed": 1.5}, "seed must be"), ({"num_workers": -1}, "num_workers must be a whole number >= 0"),
                     ({"num_workers": True}, "num_workers must be"), ({"keep_every": -1}, "keep_every must be >= 0"),
                     ({"save_every": 0}, "save_every must be at least 1")):
        with pytest.raises(PirlInputError, match=why):
            TrainerConfig(task="seg", **bad)
    with pytest.raises(PirlInputError, match="seed must be"):
        TrainerConfig(task="seg").with_overrides(["seed=-5"])
    config = TrainerConfig(task="seg", lr=0.0, seed=2**32 - 1, num_workers=0)
    assert (config.lr, config.seed, config.num_workers) == (0.0, 2**32 - 1, 0)
    assert TrainerConfig(task="seg").with_overrides(["num_workers=none"]).num_workers is None
