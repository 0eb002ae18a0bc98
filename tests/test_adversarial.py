"""DMD2-style adversarial loss: feature tap, discriminator learning, generator gradients, approximate R1."""

import pytest
import torch
from _tiny import MICRO_BACKBONE

from pvtt_train.distill.adversarial import (
    DiscriminatorHead,
    critic_features,
    discriminate,
    discriminator_loss,
    generator_adversarial_loss,
)
from pvtt_train.models.pvtt_model import Condition, WanConcatPVTT
from pvtt_train.models.schedule import FlowSchedule

SCHEDULE = FlowSchedule(shift=3.0)
B, F, H, W = 2, 3, 8, 8


def critic(num_layers=2, seed=0):
    torch.manual_seed(seed)
    return WanConcatPVTT({**MICRO_BACKBONE, "num_layers": num_layers}).train()


def condition(seed=0):
    g = torch.Generator().manual_seed(seed)
    return Condition(background=torch.zeros(B, 3, F, H, W), region=torch.ones(B, 1, F, H, W),
                     features=torch.randn(B, 7, F, H, W, generator=g), reference_slice=slice(4, 7))


def real_and_fake(seed=0):
    """An easy toy problem: real clips are flat (template-like), fake ones are noise."""
    g = torch.Generator().manual_seed(seed)
    return torch.full((B, 3, F, H, W), 0.5), torch.randn(B, 3, F, H, W, generator=g)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_shapes_and_default_block():
    model = critic(num_layers=4)
    head = DiscriminatorHead.for_critic(model)
    assert head.block == 2
    x = torch.randn(B, 3, F, H, W)
    tokens = critic_features(model, x, torch.tensor([0.3, 0.7]), condition(), head.block)
    assert tokens.shape == (B, F * (H // 2) * (W // 2), 32)  # patch 1x2x2, 2 heads x 16
    assert discriminate(head, model, x, torch.tensor([0.3, 0.7]), condition()).shape == (B,)
    assert not model.backbone.blocks[head.block]._forward_hooks  # the tap is removed again


def test_discriminator_loss_trains_head_and_blocks_up_to_k_only():
    model = critic(num_layers=2)
    head = DiscriminatorHead.for_critic(model, block=0)
    real, fake = real_and_fake()
    fake.requires_grad_(True)
    loss, logs = discriminator_loss(head, model, real, fake, condition(), SCHEDULE, gen(), 1.0, 0.05)
    loss.backward()
    assert fake.grad is None
    assert all(p.grad is not None for p in head.parameters())
    assert model.backbone.blocks[0].attn1.to_q.weight.grad is not None
    assert all(p.grad is None for p in model.backbone.blocks[1].parameters())
    assert model.backbone.proj_out.weight.grad is None
    assert set(logs) >= {"loss_d", "r1", "d_real", "d_fake"} and 0.02 <= logs["gan_sigma"] <= 0.98


def test_discriminator_learns_an_easy_problem():
    model = critic(num_layers=1)
    head = DiscriminatorHead.for_critic(model)
    real, fake = real_and_fake()
    cond, schedule = condition(), FlowSchedule(shift=1.0)
    opt = torch.optim.Adam([*head.parameters(), *model.parameters()], lr=3e-3)

    def evaluate():
        with torch.no_grad():
            return discriminator_loss(head, model, real, fake, cond, schedule, gen(123), 0.0, 0.0)[0].item()

    before, train_gen = evaluate(), gen(1)
    for _ in range(12):
        loss, _ = discriminator_loss(head, model, real, fake, cond, schedule, train_gen, 0.1, 0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate()
    assert before == pytest.approx(2 * torch.log(torch.tensor(2.0)).item(), abs=0.3)  # ~chance at init
    assert after < 0.4 * before


def test_generator_loss_reaches_the_sample_but_not_the_discriminator():
    model = critic()
    head = DiscriminatorHead.for_critic(model)
    flags = [p.requires_grad for p in [*model.parameters(), *head.parameters()]]
    _, fake = real_and_fake()
    fake.requires_grad_(True)
    loss = generator_adversarial_loss(head, model, fake, condition(), SCHEDULE, gen())
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in [*model.parameters(), *head.parameters()])
    assert [p.requires_grad for p in [*model.parameters(), *head.parameters()]] == flags


def test_approximate_r1_is_nonnegative_and_zero_without_perturbation():
    model = critic()
    head = DiscriminatorHead.for_critic(model)
    real, fake = real_and_fake()
    _, logs = discriminator_loss(head, model, real, fake, condition(), SCHEDULE, gen(), 1.0, 0.0)
    assert logs["r1"] == pytest.approx(0.0, abs=1e-12)
    loss, logs = discriminator_loss(head, model, real, fake, condition(), SCHEDULE, gen(), 1.0, 0.1)
    plain, _ = discriminator_loss(head, model, real, fake, condition(), SCHEDULE, gen(), 0.0, 0.1)
    assert logs["r1"] > 0
    assert loss.item() == pytest.approx(plain.item() + logs["r1"], rel=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = critic()
        if checkpointing:
            model.backbone.enable_gradient_checkpointing()
        head = DiscriminatorHead.for_critic(model, block=0)
        real, fake = real_and_fake()
        loss, _ = discriminator_loss(head, model, real, fake, condition(), SCHEDULE, gen(), 1.0, 0.05)
        loss.backward()
        grads.append(model.backbone.blocks[0].ffn.net[2].weight.grad)
    torch.testing.assert_close(grads[0], grads[1])
