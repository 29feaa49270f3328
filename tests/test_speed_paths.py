"""Device and speed paths: fused attention and gradient checkpointing equal the plain network, precision and
window batching choices, the trainer's wiring of the speed options, CLI flags. Tests marked ``cuda`` run only
on a GPU (``make gpu-check``)."""
from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from monai.networks.nets import SwinUNETR

from pirl_pipeline.fold_folder import FoldFolder
from pirl_pipeline.inference import sliding_window
from pirl_pipeline.inference.sliding_window import inference_dtype, plan_windows, predict_volume
from pirl_pipeline.networks import PIRLNet
from pirl_pipeline.networks.swinunetr_compat import (
    FusedWindowAttention,
    set_fused_attention,
    set_gradient_checkpointing,
)
from pirl_pipeline.trainer_config import TrainerConfig
from pirl_pipeline.training import base_trainer
from pirl_pipeline.training.base_trainer import BaseTrainer, RunContext, default_num_workers

SMALL = {"feature_size": 12, "depths": (1, 1, 1, 1), "proj_dim": 16, "window_size": 4}
PATCH = (64, 32, 32)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair():
    torch.manual_seed(0)
    plain = PIRLNet(2, 2, PATCH, **SMALL)
    other = copy.deepcopy(plain)
    assert set_fused_attention(other) == 4 and isinstance(other.swinViT.layers1[0].blocks[0].attn,
                                                           FusedWindowAttention)
    return plain, other


def _forward_backward(net, x):
    net.zero_grad()
    out = net(x, views=x.flip(2))
    (out.output.square().mean() + out.proj.square().mean() + out.view_proj.square().mean()).backward()
    return out.output.detach(), {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


def test_fused_attention_equals_the_plain_path_in_training_and_inference():
    plain, fused = _pair()
    x = torch.randn(1, 2, *PATCH)
    out_a, grads_a = _forward_backward(plain, x)
    out_b, grads_b = _forward_backward(fused, x)
    assert torch.allclose(out_a, out_b, atol=1e-5) and grads_a.keys() == grads_b.keys()
    for k in grads_a:  # relative to each gradient's scale; the position-bias tables get theirs through SDPA
        assert (grads_a[k] - grads_b[k]).abs().max() <= 1e-4 * grads_a[k].abs().max() + 1e-7, k
    with torch.no_grad():
        assert torch.allclose(plain(x).output, fused(x).output, atol=1e-5)
    set_fused_attention(fused, False)
    assert type(fused.swinViT.layers1[0].blocks[0].attn) is not FusedWindowAttention


def test_fused_attention_on_plain_swinunetr():
    torch.manual_seed(0)
    swin = SwinUNETR(2, 3, feature_size=12, depths=(1, 1, 1, 1), window_size=4).eval()
    fused = copy.deepcopy(swin)
    set_fused_attention(fused)
    x = torch.randn(1, 2, 64, 64, 32)
    with torch.no_grad():
        assert torch.allclose(swin(x), fused(x), atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    plain, other = _pair()
    set_fused_attention(other, False)
    assert set_gradient_checkpointing(other) == 4
    x = torch.randn(1, 2, *PATCH)
    _, grads_a = _forward_backward(plain, x)
    _, grads_b = _forward_backward(other, x)
    assert all(torch.allclose(grads_a[k], grads_b[k], atol=1e-6) for k in grads_a)


def test_inference_precision(monkeypatch):
    assert inference_dtype("cpu") is None and inference_dtype("cpu", "fp32") is None
    assert inference_dtype("cpu", "bf16") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert inference_dtype("cuda") is torch.bfloat16 and inference_dtype("cuda", "fp32") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert inference_dtype("cuda") is torch.float16
    with pytest.raises(ValueError, match="choose from"):
        inference_dtype("cuda", "int8")


def test_windows_on_the_cpu_and_batched_windows_equal_single_ones():
    net = PIRLNet(2, 3, PATCH, **SMALL).eval()
    volume = torch.randn(2, 70, 40, 36)
    assert plan_windows(lambda x: x, volume, PATCH, torch.device("cpu")) == (1, torch.device("cpu"))
    assert plan_windows(lambda x: x, volume, PATCH, torch.device("cpu"), 3)[0] == 3
    one = predict_volume([net], "pirl", volume, [0, 1], PATCH, mirror=False)
    four = predict_volume([net], "pirl", volume, [0, 1], PATCH, mirror=False, sw_batch_size=4)
    assert one.shape == (3, 70, 40, 36) and one.dtype == torch.float32
    assert torch.allclose(one, four, atol=1e-5)


def test_default_loader_workers():
    assert default_num_workers(torch.device("cpu")) == 0
    cuda = torch.device("cuda", 0)
    assert default_num_workers(cuda, cpus=16, local_ranks=1) == 8
    assert default_num_workers(cuda, cpus=16, local_ranks=4) == 2
    assert default_num_workers(cuda, cpus=2, local_ranks=1) == 1


def test_backward_inside_autocast_is_refused():
    trainer = SimpleNamespace(use_amp=True, device=torch.device("cpu"),
                              scaler=torch.amp.GradScaler("cuda", enabled=False))
    w = torch.ones(2, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="inside autocast"):
        BaseTrainer.backward(trainer, (w * 2).sum())
    BaseTrainer.backward(trainer, (w * 2).sum())
    assert torch.equal(w.grad, torch.full((2,), 2.0))


class _TinyTrainer(BaseTrainer):
    name = "TinyTrainer"

    def build_network(self):
        return PIRLNet(self.num_modalities, 2, self.patch_size, **SMALL)

    def uses_all_parameters(self) -> bool:
        return True


def _tiny_context(tmp_path) -> RunContext:
    plan = SimpleNamespace(patch_size=list(PATCH), batch_size=1, network={"feature_size": 12})
    plans = SimpleNamespace(configuration=lambda name: plan, num_input_channels=2)
    return RunContext(plans, "3d_fullres", None, tmp_path, FoldFolder(tmp_path, 0), [], [])


def test_trainer_wires_the_speed_options(tmp_path, monkeypatch):
    wrapped, compiled = [], []
    monkeypatch.setattr(base_trainer.distributed, "wrap",
                        lambda model, info, device, find_unused=True: wrapped.append(find_unused) or model)
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    config = TrainerConfig(task="seg", grad_checkpoint=True, compile=True)
    trainer = _TinyTrainer(_tiny_context(tmp_path), config)
    assert not hasattr(trainer, "network")  # construction reads the configuration only
    trainer.initialize()
    block = trainer.network.swinViT.layers1[0].blocks[0]
    assert isinstance(block.attn, FusedWindowAttention) and block.use_checkpoint
    assert wrapped == [False] and compiled == [trainer.network] and trainer.num_workers == 0
    assert not trainer.use_amp  # CPU: fp32 whatever `amp` says
    plain = _TinyTrainer(_tiny_context(tmp_path), TrainerConfig(task="seg", fused_attention=False))
    plain.initialize()
    assert type(plain.network.swinViT.layers1[0].blocks[0].attn) is not FusedWindowAttention


def test_cli_speed_flags(monkeypatch, tmp_path):
    from pirl_pipeline.cli import predict, train

    args = train.build_parser().parse_args(["1", "3d_fullres", "seg", "--fp32", "--grad_checkpoint", "--compile"])
    config = train.make_config(args, None)
    assert not config.amp and config.grad_checkpoint and config.compile and config.num_workers is None
    seen = {}

    def fake(folder, folds, checkpoint, device, **kwargs):
        seen.update(kwargs, device=device)
        raise SystemExit(0)

    monkeypatch.setattr(predict.PIRLPredictor, "from_model_folder", staticmethod(fake))
    (tmp_path / "in").mkdir()
    with pytest.raises(SystemExit):
        predict.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path), "--fp32",
                      "--sw_batch_size", "3", "--disable_fused_attention"])
    assert seen["precision"] == "fp32" and seen["sw_batch_size"] == 3 and seen["fused_attention"] is False
    assert seen["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


# ---- on a GPU only -------------------------------------------------------------------------------------------
@pytest.mark.cuda
@needs_cuda
def test_cuda_reduce_means_through_nccl(tmp_path):
    import torch.distributed as dist

    from pirl_pipeline.training import distributed

    dist.init_process_group(distributed.backend_for("cuda"), init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1, timeout=timedelta(seconds=60))
    try:
        info = distributed.DistInfo(0, 1, 0, launched=True)
        assert distributed.collective_device().type == "cuda"
        assert distributed.reduce_means({"a": 3.0}, {"a": 2, "b": 0}, info) == {"a": 1.5}
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
@needs_cuda
def test_cuda_bf16_fused_training_step_matches_fp32():
    plain, fused = _pair()
    plain, fused = plain.cuda(), fused.cuda()
    x = torch.randn(2, 2, *PATCH, device="cuda")
    out_a, _ = _forward_backward(plain, x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fused(x, views=x.flip(2))
        loss = out.output.float().square().mean() + out.proj.float().square().mean()
        loss = loss + out.view_proj.float().square().mean()
    fused.zero_grad()
    loss.backward()
    assert torch.isfinite(loss) and (out.output.float() - out_a).abs().max() < 0.1 * out_a.abs().max()
    for name in ("swinViT.layers1.0.blocks.0.attn.relative_position_bias_table", "out.conv.conv.weight"):
        g = dict(fused.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


@pytest.mark.cuda
@needs_cuda
def test_cuda_predict_volume_batches_and_blends_on_the_device(monkeypatch):
    net = PIRLNet(2, 3, PATCH, **SMALL).eval()
    set_fused_attention(net)
    volume = torch.randn(2, 90, 50, 40)
    reference = predict_volume([net], "pirl", volume, [0, 1], PATCH, mirror=False)
    net = net.cuda()
    plans = []
    real = sliding_window.plan_windows
    monkeypatch.setattr(sliding_window, "plan_windows", lambda *a, **k: plans.append(real(*a, **k)) or plans[-1])
    fp32 = predict_volume([net], "pirl", volume, [0, 1], PATCH, mirror=False, device="cuda", precision="fp32")
    bf16 = predict_volume([net], "pirl", volume, [0, 1], PATCH, mirror=False, device="cuda")
    assert plans[-1][0] > 1 and plans[-1][1].type == "cuda" and fp32.device.type == "cpu"
    assert torch.allclose(fp32, reference, atol=1e-3)
    assert (bf16 - reference).abs().max() < 0.05 * reference.abs().max()


def test_gpu_check_records_failures_and_timeouts_instead_of_stopping(tmp_path):
    import sys
    import time

    from benchmarks.gpu_check import Part, summary_rows

    deadline = time.monotonic() + 60
    failed = Part("fails", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"], 30).run(tmp_path, deadline)
    pid_file = tmp_path / "grandchild.pid"  # like torchrun's workers: a grandchild in a session of its own
    spawn = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
             f"time.sleep(60)'], start_new_session=True); open({str(pid_file)!r}, 'w').write(str(p.pid)); "
             "time.sleep(60)")
    slow = Part("slow", [sys.executable, "-c", spawn], 3).run(tmp_path, deadline)
    stat = Path(f"/proc/{pid_file.read_text()}/stat")
    time.sleep(0.2)
    assert not stat.exists() or stat.read_text().split(") ")[1][0] in "ZX"  # killed (a zombie at most)
    result = tmp_path / "r.json"
    ok = Part("ok", [sys.executable, "-c", f"open({str(result)!r}, 'w').write('{{\"x\": 1}}')"], 30,
              result_file=result).run(tmp_path, deadline)
    assert failed["status"] == "failed (rc 3)" and "boom" in failed["log_tail"]
    assert slow["status"].startswith("timed out") and slow["seconds"] < 10
    assert ok["status"] == "ok" and ok["results"] == {"x": 1}
    assert [r[:2] for r in summary_rows({"fails": failed, "ok": ok})] == [["fails", "failed (rc 3)"], ["ok", "ok"]]
