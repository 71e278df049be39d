"""LR multipliers and the weight EMA."""

import math
from functools import partial

import pytest
import torch

from lit_rlhf.algorithms import ema_update, warmup_then_cosine

#: The paper's SFT/RM schedule (cosine to 10%, no warm-up) and PPO's (10 rollouts from 1/10, then constant).
sft_rm = partial(warmup_then_cosine, warmup_steps=0, start=0.0, floor=0.1)
ppo = partial(warmup_then_cosine, total_steps=math.inf, warmup_steps=10, start=0.1, floor=1.0)


def test_cosine_to_a_floor_without_warmup():
    assert sft_rm(0, total_steps=100) == pytest.approx(1.0)
    assert sft_rm(50, total_steps=100) == pytest.approx(0.55)  # 0.1 + 0.9 * 0.5
    assert sft_rm(100, total_steps=100) == pytest.approx(0.1)
    assert sft_rm(150, total_steps=100) == pytest.approx(0.1)


def test_cosine_with_warmup_from_zero():
    schedule = partial(warmup_then_cosine, total_steps=110, warmup_steps=10, start=0.0, floor=0.2)
    assert schedule(0) == 0.0
    assert schedule(5) == pytest.approx(0.5)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.6)  # 0.2 + 0.8 * 0.5
    assert schedule(110) == pytest.approx(0.2)


def test_a_decaying_schedule_rejects_warmup_past_the_end_or_no_end():
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_then_cosine(10, total_steps=10, warmup_steps=10, floor=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        warmup_then_cosine(0, total_steps=math.inf, floor=0.1)


def test_warmup_then_constant():
    assert ppo(0) == pytest.approx(0.1)
    assert ppo(5) == pytest.approx(0.55)
    assert ppo(10) == 1.0
    assert ppo(1000) == 1.0
    assert ppo(0, warmup_steps=0) == 1.0


def test_schedules_drive_lambda_lr():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(ppo, warmup_steps=2, start=0.5))
    lrs = []
    for _ in range(3):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1.0, 1.5, 2.0])


def test_ema_update_in_place():
    ema = [torch.tensor([1.0, 2.0]), torch.tensor(10.0)]
    params = [torch.nn.Parameter(torch.tensor([3.0, 4.0])), torch.nn.Parameter(torch.tensor(20.0))]
    ema_update(ema, params, decay=0.75)
    torch.testing.assert_close(ema[0], torch.tensor([1.5, 2.5]))  # 0.75*1 + 0.25*3, 0.75*2 + 0.25*4
    torch.testing.assert_close(ema[1], torch.tensor(12.5))
    assert ema[0].grad_fn is None


def test_ema_keeps_its_dtype_with_low_precision_params():
    ema = [torch.zeros(2)]
    ema_update(ema, [torch.tensor([1.0, -1.0], dtype=torch.bfloat16)], decay=0.5)
    assert ema[0].dtype == torch.float32
    torch.testing.assert_close(ema[0], torch.tensor([0.5, -0.5]))


def test_ema_rejects_mismatches_without_touching_anything():
    ema = [torch.zeros(2), torch.zeros(3)]
    with pytest.raises(ValueError, match="2 EMA tensors but 1"):
        ema_update(ema, [torch.ones(2)], decay=0.5)
    assert ema[0].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="decay"):
        ema_update(ema, [torch.ones(2), torch.ones(3)], decay=1.5)


def test_cosine_optimizer_schedules_the_optimizer_settings():
    from lit_rlhf.modules.base import cosine_optimizer
    from lit_rlhf.settings import OptimizerSettings

    model = torch.nn.Linear(2, 2)
    config = cosine_optimizer(model, OptimizerSettings(learning_rate=1e-3, warmup_steps=2, min_lr_ratio=0.2), 10)
    scheduler = config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(12):
        rates.append(config["optimizer"].param_groups[0]["lr"])
        config["optimizer"].step()
        scheduler.step()
    assert rates == pytest.approx(
        [1e-3 * s / 2 for s in range(2)]
        + [1e-3 * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 8))) for s in range(2, 10)]
        + [2e-4] * 2
    )
    assert config["lr_scheduler"]["interval"] == "step"
