"""Contrastive training of the identity encoder on synthetic clips, and its held-out evaluation.

Each training clip gives a positive set: the product photo of B and B's crops from the target
frames (moving, rotating, re-lit, and degraded with blur and noise the way a few-step student's
frames are). Negatives are the other clips' products plus two hard ones per clip:

- the template product A of the same clip (same shape, motion and scene, only the product
  differs): the mistake of a student that copies the template;
- a photo of B's *twin*: B with another pattern but the same shape and colours. Random products
  differ mostly in colour, so without twins a colour histogram would already score well and the
  loss would not care whether the student keeps the product's pattern.

Evaluation scores cosine(frame crop, photo crop) on held-out seeds and reports ROC AUC of
same-product pairs against several sets of different-product pairs (see ``evaluate_identity_encoder``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import kornia
import numpy as np
import torch
import torch.nn.functional as F

from ..data.batches import HELDOUT_SEED_BASE, to_torch
from ..data.synthetic import PATTERNS, Product, SyntheticConfig, SyntheticVideoGenerator
from .crops import product_crops, reference_crops
from .encoder import IdentityEncoder

NEAR_DUPLICATE_COLOR = 0.2  # max per-channel colour difference under which two same-pattern products look alike


class _ProductRecorder(SyntheticVideoGenerator):
    """The synthetic generator, also keeping the parameters of each example's new product B.

    The generator only returns pixels; twins and the near-duplicate check need B's parameters,
    so this hooks ``_reference``, the one call that receives B (and that renders any product's photo).
    """

    def _reference(self, product: Product, rng: np.random.Generator) -> np.ndarray:
        self.products.append(product)
        return super()._reference(product, rng)

    def batch_with_twins(self, seeds) -> tuple[dict[str, np.ndarray], list[Product]]:
        """``batch(seeds)`` plus ``twin`` [B,H,W,3]: photos of each B with another pattern; and the B products."""
        self.products: list[Product] = []
        batch = self.batch(seeds)
        products = self.products
        if len(products) != len(batch["reference"]):
            raise RuntimeError("SyntheticVideoGenerator no longer renders the reference via _reference(product, "
                               "rng); update pvtt_train/identity/train.py:_ProductRecorder.")
        twins = []
        for seed, product in zip(seeds, products):
            rng = np.random.default_rng([int(seed), 7])
            other = [p for p in PATTERNS if p != product.pattern]
            twins.append(super()._reference(dataclasses.replace(product, pattern=str(rng.choice(other))), rng))
        batch["twin"] = np.stack(twins)
        return batch, products


def degrade(frames: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-clip random blur, noise, gain and colour cast on [B,F,H,W,3] frames: a student's imperfect render."""
    b, f, h, w, _ = frames.shape
    u = torch.rand(b, 6, generator=gen)
    sigma = (0.05 + 0.75 * u[:, 0]).repeat_interleave(f)
    x = frames.reshape(b * f, h, w, 3).permute(0, 3, 1, 2)
    x = kornia.filters.gaussian_blur2d(x, (5, 5), torch.stack([sigma, sigma], 1), border_type="replicate")
    x = x.permute(0, 2, 3, 1).reshape(b, f, h, w, 3)
    gain = 1 + 0.24 * u[:, 1:2] - 0.12 + 0.08 * u[:, 2:5] - 0.04  # brightness +-12 %, colour cast +-4 %
    noise = torch.randn(frames.shape, generator=gen) * (0.04 * u[:, 5]).view(b, 1, 1, 1, 1)
    return (x * gain.view(b, 1, 1, 1, 3) + noise).clamp(0, 1)


def _contrastive_loss(z_ref: torch.Tensor, z_twin: torch.Tensor, z_tgt: torch.Tensor, z_tpl: torch.Tensor,
                      tau: float) -> torch.Tensor:
    """InfoNCE frame -> photo (twin photos as extra negatives), plus supervised-contrastive photo -> frames
    (template crops as extra negatives).

    z_ref, z_twin [B,D]; z_tgt, z_tpl [B,K,D] (K frames of product B, resp. template product A, per clip).
    """
    b, k, _ = z_tgt.shape
    labels = torch.arange(b).repeat_interleave(k)
    frame_to_photo = F.cross_entropy(z_tgt.reshape(b * k, -1) @ torch.cat([z_ref, z_twin]).T / tau, labels)
    logits = z_ref @ torch.cat([z_tgt.reshape(b * k, -1), z_tpl.reshape(b * k, -1)]).T / tau
    positive = (labels[None, :] == torch.arange(b)[:, None]).float()  # [B, B*K]: photo i vs clip i's frames
    log_prob = F.log_softmax(logits, dim=1)[:, : b * k]
    photo_to_frames = -(log_prob * positive).sum(1).div(k).mean()
    return (frame_to_photo + photo_to_frames) / 2


def _take(x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Frames ``frames`` [B,K] (indices) of each clip of ``x`` [B,F,...] -> [B,K,...]."""
    return x[torch.arange(len(x))[:, None], frames]


def _embed_clips(encoder: torch.nn.Module, batch: dict[str, torch.Tensor], frames_key: str,
                 gen: torch.Generator | None, chunk: int = 64) -> torch.Tensor:
    """Embeddings [B,F,D] of the product crops of ``batch[frames_key]`` (degraded when ``gen`` is given)."""
    out = []
    for i in range(0, len(batch["mask"]), chunk):
        frames, mask = batch[frames_key][i:i + chunk], batch["mask"][i:i + chunk]
        if gen is not None:
            frames = degrade(frames, gen)
        out.append(encoder(product_crops(frames, mask, encoder.crop_size)[0]).view(*mask.shape[:2], -1))
    return torch.cat(out)


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half): Mann-Whitney U."""
    scores = np.concatenate([positive, negative]).astype(np.float64)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # average 1-based rank of each score
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _near_duplicate(a: Product, b: Product) -> bool:
    """Same shape and pattern and nearly the same colours: a different seed, but the same-looking product."""
    close = np.abs(np.asarray(a.colors) - np.asarray(b.colors)).max() < NEAR_DUPLICATE_COLOR
    return a.shape == b.shape and a.pattern == b.pattern and bool(close)


@torch.no_grad()
def evaluate_identity_encoder(encoder: torch.nn.Module, clips: int = 256, config: SyntheticConfig | None = None,
                              first: int = 0, degrade_seed: int | None = 0) -> dict:
    """ROC AUC of cosine(frame crop, photo crop) for same-product vs different-product pairs, on held-out seeds.

    Positives: each target frame's crop of product B with the photo of B (``clips`` x frames pairs).
    Negatives, each reported separately because they are not equally hard:

    - ``all``: a frame of one clip with the photo of any other clip (every different seed);
    - ``distinct``: the same, without pairs whose product parameters nearly coincide (same shape and
      pattern, every colour channel within NEAR_DUPLICATE_COLOR): different seeds, same-looking product;
    - ``same_shape``: only pairs whose products share the shape, so colour and pattern must decide;
    - ``template``: a frame of the template product A with the photo of B from the *same* clip
      (same shape, motion and scene): what a student that copied the template would score;
    - ``twin``: a frame of B with the photo of B's twin (same shape and colours, another pattern):
      what a student that kept the colours but lost the pattern would score.

    Frames are scored clean and, with ``degrade_seed`` set, also blurred/noised like a student's output.
    """
    encoder = encoder.eval()
    seeds = range(HELDOUT_SEED_BASE + first, HELDOUT_SEED_BASE + first + clips)
    batch, products = _ProductRecorder(config or SyntheticConfig()).batch_with_twins(seeds)
    batch = to_torch(batch)
    ref, twin = (torch.cat([encoder(reference_crops(batch[key][i:i + 64], encoder.crop_size))
                            for i in range(0, clips, 64)]) for key in ("reference", "twin"))
    n = clips
    same_clip = torch.eye(n, dtype=torch.bool)
    shape = np.array([p.shape for p in products])
    dup = torch.tensor([[i != j and _near_duplicate(products[i], products[j]) for j in range(n)] for i in range(n)])
    negatives = {"all": ~same_clip, "distinct": ~same_clip & ~dup,
                 "same_shape": ~same_clip & torch.from_numpy(shape[:, None] == shape[None, :])}
    report = {"clips": n, "frames_per_clip": int(batch["mask"].shape[1]),
              "heldout_seeds": [seeds.start, seeds.stop], "near_duplicate_pairs": int(dup.sum()) // 2,
              "negative_pairs": {k: int(v.sum()) * int(batch["mask"].shape[1]) for k, v in negatives.items()}}
    variants = {"clean": None} if degrade_seed is None else {
        "clean": None, "degraded": torch.Generator().manual_seed(degrade_seed)}
    for name, gen in variants.items():
        if gen is not None:
            state = gen.get_state()
        tgt = _embed_clips(encoder, batch, "target", gen)
        if gen is not None:
            gen.set_state(state)  # the template frames get the same degradation as the target frames
        tpl = _embed_clips(encoder, batch, "template", gen)
        cos = torch.einsum("ifd,jd->ifj", tgt, ref)  # frame f of clip i vs photo of clip j
        pos = cos.diagonal(dim1=0, dim2=2).flatten().numpy()
        tpl_cos = torch.einsum("ifd,id->if", tpl, ref).flatten().numpy()
        twin_cos = torch.einsum("ifd,id->if", tgt, twin).flatten().numpy()
        result = {f"auc_{k}": roc_auc(pos, cos.permute(0, 2, 1)[v].flatten().numpy()) for k, v in negatives.items()}
        result["auc_template"] = roc_auc(pos, tpl_cos)
        result["auc_twin"] = roc_auc(pos, twin_cos)
        result["cos_same_mean"] = float(pos.mean())
        result["cos_different_mean"] = float(cos.permute(0, 2, 1)[negatives["all"]].mean())
        result["cos_template_mean"] = float(tpl_cos.mean())
        result["cos_twin_mean"] = float(twin_cos.mean())
        report[name] = {k: round(v, 4) for k, v in result.items()}
    return report


def train_identity_encoder(minutes: float = 5.5, steps: int = 400, seed: int = 0, batch_size: int = 48,
                           frames_per_clip: int = 2, lr: float = 3e-3, tau: float = 0.1,
                           config: SyntheticConfig | None = None, eval_clips: int = 256,
                           log: Callable[[str], None] | None = None) -> tuple[IdentityEncoder, dict]:
    """Train on fresh synthetic clips from training seeds for ``steps`` updates or ``minutes``, then evaluate.

    The learning rate follows a cosine decay over whichever budget runs out first (steps or time),
    so a time-limited run still ends at a small learning rate.
    """
    config = config or SyntheticConfig()
    torch.manual_seed(seed)
    encoder = IdentityEncoder()
    # Random products differ mostly in colour, which even random conv features pick up: the
    # untrained encoder's scores show how much of the final AUC the training actually adds.
    untrained = evaluate_identity_encoder(encoder, clips=eval_clips, config=config, degrade_seed=None)["clean"]
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=1e-4)
    synth = _ProductRecorder(config)
    rng = np.random.default_rng([seed, 1])
    gen = torch.Generator().manual_seed(seed)
    start, step, running = time.monotonic(), 0, None
    budget = minutes * 60 if minutes > 0 else math.inf
    while step < steps and time.monotonic() - start < budget:
        progress = max(step / steps, (time.monotonic() - start) / budget)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        batch = to_torch(synth.batch_with_twins(rng.integers(0, HELDOUT_SEED_BASE, size=batch_size))[0])
        idx = torch.from_numpy(rng.integers(0, config.frames, size=(batch_size, 2 * frames_per_clip)))
        tgt_idx, tpl_idx = idx[:, :frames_per_clip], idx[:, frames_per_clip:]
        tgt = product_crops(degrade(_take(batch["target"], tgt_idx), gen), _take(batch["mask"], tgt_idx))[0]
        tpl = product_crops(degrade(_take(batch["template"], tpl_idx), gen), _take(batch["mask"], tpl_idx))[0]
        z = encoder(torch.cat([reference_crops(batch["reference"]), reference_crops(batch["twin"]), tgt, tpl]))
        z_ref, z_twin, z_tgt, z_tpl = z.split([batch_size, batch_size, len(tgt), len(tpl)])
        loss = _contrastive_loss(z_ref, z_twin, z_tgt.view(batch_size, frames_per_clip, -1),
                                 z_tpl.view(batch_size, frames_per_clip, -1), tau)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if log and step % 50 == 0:
            log(f"step {step} loss {running:.4f} {time.monotonic() - start:.0f}s")
    train_seconds = time.monotonic() - start
    encoder.eval().requires_grad_(False)
    report = {
        "training": {"steps": step, "seconds": round(train_seconds, 1), "loss_ema": round(running or 0.0, 4),
                     "batch_size": batch_size, "frames_per_clip": frames_per_clip, "lr": lr, "tau": tau,
                     "seed": seed, "threads": torch.get_num_threads(), "params": sum(
                         p.numel() for p in encoder.parameters()), "seeds": [0, HELDOUT_SEED_BASE],
                     "data": config.to_dict()},
        "heldout": evaluate_identity_encoder(encoder, clips=eval_clips, config=config),
        "heldout_untrained_encoder": untrained,
    }
    return encoder, report
