"""Optional DMD2-style adversarial loss: a discriminator head on the critic's transformer features.

DMD alone matches the teacher's distribution, including its errors; a GAN term against real
clips lets the student move past the teacher. As in DMD2, the discriminator is not a separate
network: a small head reads the tokens after block ``k`` of the critic (the fake-score model),
so it sees through the same backbone the critic already trains. Both real and fake x0 are noised
to one shared random sigma first (Diffusion-GAN), which keeps the two distributions overlapping
and the discriminator's gradients useful.

``x0_real`` is a batch of ground-truth clips in model space (``model.encode(target)``) matching
``cond``; ``x0_fake`` is the student's x0. R1 is approximated by the output change under a small
input perturbation (APT / Self-Forcing), which needs no double backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.pvtt_model import Condition
from ..models.schedule import FlowSchedule
from .dmd import sample_score_sigma


def _transformer(critic: nn.Module) -> nn.Module:
    return critic.backbone if hasattr(critic, "backbone") else critic.transformer  # wan_concat / wan_vace


class DiscriminatorHead(nn.Module):
    """Per-token MLP on the critic's block-``block`` tokens [B, L, D], mean-pooled to one logit per sample."""

    def __init__(self, dim: int, block: int, hidden: int = 256):
        super().__init__()
        self.block = block
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    @classmethod
    def for_critic(cls, critic: nn.Module, block: int | None = None, hidden: int = 256) -> DiscriminatorHead:
        """A head sized for ``critic``'s transformer, reading its middle block by default."""
        transformer = _transformer(critic)
        dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        return cls(dim, len(transformer.blocks) // 2 if block is None else block, hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # The head stays float32 when the critic runs in bf16.
        return self.net(tokens.to(self.net[-1].weight.dtype)).mean(dim=(1, 2))


class _Captured(Exception):
    """Carries block ``k``'s output out of the forward pass, which stops there."""

    def __init__(self, tokens: torch.Tensor):
        super().__init__()
        self.tokens = tokens


def critic_features(critic: nn.Module, x_t: torch.Tensor, sigma: torch.Tensor, cond: Condition,
                    block: int) -> torch.Tensor:
    """Tokens [B, L, D] after ``critic``'s transformer block ``block`` at input ``x_t``, noise level ``sigma``."""
    return tokens_after(_transformer(critic).blocks[block], lambda: critic.velocity(x_t, sigma, cond))


def tokens_after(block: nn.Module, forward) -> torch.Tensor:
    """The output of ``block`` while ``forward()`` runs the model that holds it.

    The forward pass is cut right after that block (the hook raises), so the later blocks cost
    nothing and cannot receive gradients. The hook is gone before any backward pass, so gradient
    checkpointing's recomputation of the block is unaffected. ``memory_plan`` measures the
    discriminator's activations through this same cut.
    """
    def hook(_module, _inputs, output):
        raise _Captured(output)

    handle = block.register_forward_hook(hook)
    try:
        forward()
    except _Captured as captured:
        return captured.tokens
    finally:
        handle.remove()
    raise RuntimeError("the hooked block did not run")


def discriminate(head: DiscriminatorHead, critic: nn.Module, x_t: torch.Tensor, sigma: torch.Tensor,
                 cond: Condition) -> torch.Tensor:
    """One logit per sample (high = real) for noisy clips ``x_t`` at ``sigma``."""
    return head(critic_features(critic, x_t, sigma, cond, head.block))


def _noised(x0: torch.Tensor, sigma: torch.Tensor, schedule: FlowSchedule,
            generator: torch.Generator) -> torch.Tensor:
    return schedule.noise(x0, torch.randn(x0.shape, generator=generator).to(x0), sigma)


def discriminator_loss(head: DiscriminatorHead, critic: nn.Module, x0_real: torch.Tensor, x0_fake: torch.Tensor,
                       cond: Condition, schedule: FlowSchedule, generator: torch.Generator, r1_weight: float,
                       r1_sigma: float) -> tuple[torch.Tensor, dict]:
    """Non-saturating GAN loss of the discriminator plus ``r1_weight`` times approximate R1.

    Gradients reach the head and the critic up to the head's block; ``x0_fake`` is detached.
    Real, fake and (if ``r1_weight > 0``) perturbed-real clips go through the critic as one batch.
    """
    n = x0_real.shape[0]
    sigma = sample_score_sigma(n, schedule, generator).to(x0_real)
    real_t = _noised(x0_real.detach(), sigma, schedule, generator)
    inputs = [real_t, _noised(x0_fake.detach(), sigma, schedule, generator)]
    if r1_weight > 0:
        inputs.append(real_t + r1_sigma * torch.randn(real_t.shape, generator=generator).to(real_t))
    logits = discriminate(head, critic, torch.cat(inputs), sigma.repeat(len(inputs)), cond.repeat(len(inputs)))
    d_real, d_fake, *d_perturbed = logits.split(n)
    loss_gan = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    r1 = (d_real - d_perturbed[0]).square().mean() if d_perturbed else torch.zeros_like(loss_gan)
    logs = {"loss_d": loss_gan.item(), "r1": r1.item(), "d_real": d_real.mean().item(),
            "d_fake": d_fake.mean().item(), "gan_sigma": sigma.mean().item()}
    return loss_gan + r1_weight * r1, logs


def generator_adversarial_loss(head: DiscriminatorHead, critic: nn.Module, x0_fake: torch.Tensor, cond: Condition,
                               schedule: FlowSchedule, generator: torch.Generator) -> torch.Tensor:
    """Non-saturating generator loss ``softplus(-D(fake))``; its gradient reaches ``x0_fake`` only.

    The gradient with respect to ``x0_fake`` is taken at once with ``torch.autograd.grad`` (which
    never touches parameter ``.grad``) and returned as a surrogate whose value is the loss and
    whose gradient is that one: critic and head stay out of the student's backward, and a critic
    with gradient checkpointing recomputes under the same ``requires_grad`` state it ran with.
    """
    sigma = sample_score_sigma(x0_fake.shape[0], schedule, generator).to(x0_fake)
    with torch.enable_grad():
        leaf = x0_fake.detach().requires_grad_(True)
        logits = discriminate(head, critic, _noised(leaf, sigma, schedule, generator), sigma, cond)
        loss = F.softplus(-logits).mean()
        (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach() + (x0_fake * grad).sum() - (x0_fake * grad).sum().detach()
