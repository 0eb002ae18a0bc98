"""Train the shipped video encoder on synthetic product clips (training seeds only).

Objective, on the 32-d feature layer with linear heads:

- *content*: on clean clips, classify the product's shape, pattern, pattern angle and period and
  regress its two colours, the background colours and gradient direction, size, start/end
  position, rotation, aspect, the per-frame light and the camera shake. These are the
  generator's own random parameters, re-derived from its seeded rng (``clip_parameters``);
  every example checks the re-derivation against a value the generator drew last. The colour
  regression has its own, doubled weight: a colour cast cannot be seen in one clip (colours are
  uniformly random), only as a shifted distribution, so the features must carry colour well.
- *quality*: every clip is degraded with probability 0.6 (blur, noise, per-frame colour jitter,
  brightness flicker or washout, over the whole frame or only the product, at a random strength)
  and a head names the degradation and regresses its strength.

So distances grow both when the content distribution moves (wrong colours, shapes, motion) and
when quality drops, which is what Inception features give FID. Global colour casts, temporal
shuffling, frozen clips and flat colour are never trained on; the sanity table shows how the
encoder ranks them. Features are finally standardised on clean training clips.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import HELDOUT_SEED_BASE
from ..data.synthetic import PATTERNS, SHAPES, SyntheticConfig, SyntheticVideoGenerator, _random_color, _random_product
from ..models.checkpoint import write_atomic
from .frechet import frechet_distance
from .video_encoder import METADATA_KEY, VideoEncoder, save_video_encoder

ANGLES = (0.0, math.pi / 2, math.pi / 4, -math.pi / 4)
PERIODS = (0.7, 1.0)
CLASS_HEADS = {"shape": len(SHAPES), "pattern": len(PATTERNS), "angle": len(ANGLES), "period": len(PERIODS)}
# colour: per-frame colour jitter; flicker: per-frame brightness; washout: contrast and saturation loss.
DEGRADATIONS = ("clean", "blur", "noise", "colour", "flicker", "washout")
COLOUR_VALUES = 12  # clip_labels' values start with the product's and the background's two RGB colours
VAL_OFFSET = 100_000  # held-out seeds for validation, away from the clips the gates evaluate on


@dataclass
class EncoderTrainConfig:
    dim: int = 32
    channels: tuple[int, ...] = (32, 48, 64, 96)
    pool_seeds: int = 4000  # training seeds rendered once; template and target of each are clips
    batch_size: int = 64
    max_steps: int = 2000
    minutes: float = 5.0  # budget for rendering and training (the report comes after); if it cuts
    # training short, the report says time_limited and the weights depend on the machine's speed
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    colour_weight: float = 2.0  # weight of the colour regression (see the module docstring)
    clean_fraction: float = 0.4
    product_only_fraction: float = 0.5
    seed: int = 0
    val_clips: int = 256
    sanity_clips: int = 128  # per half: the table compares two disjoint held-out halves
    data: SyntheticConfig = field(default_factory=SyntheticConfig)


def clip_parameters(config: SyntheticConfig, seed: int) -> dict:
    """The random draws of ``SyntheticVideoGenerator.example(seed)``, repeated in the same order."""
    c = config
    rng = np.random.default_rng(seed)
    ca, cb = _random_color(rng), _random_color(rng)
    theta = rng.uniform(0, 2 * math.pi)
    rng.normal(0, c.texture_std, size=(c.height + 4, c.width + 4, 3))  # background texture
    shake = rng.normal(0, c.shake_px, size=(c.frames, 2))
    shake[0] = 0.0
    size0 = rng.uniform(*c.product_size)
    zoom = 1 + rng.uniform(-c.max_zoom, c.max_zoom)
    size1 = float(np.clip(size0 * zoom, c.product_size[0] * 0.8, c.product_size[1] * 1.1))
    margin = max(size0, size1) / 2 * 1.2
    p0 = np.array([rng.uniform(margin, c.width - margin), rng.uniform(margin, c.height - margin)])
    p1 = np.array([rng.uniform(margin, c.width - margin), rng.uniform(margin, c.height - margin)])
    rot0 = rng.uniform(-0.2, 0.2)
    rot1 = rot0 + math.radians(rng.uniform(-c.max_rotation_deg, c.max_rotation_deg))
    product_a = _random_product(rng)
    product_b = _random_product(rng, shape=product_a.shape)
    gain = np.ones(c.frames)
    for f in range(1, c.frames):
        gain[f] = float(np.clip(gain[f - 1] + rng.normal(0, 0.04), *c.light_gain))
    backdrop = rng.uniform(0.85, 1.0)  # the reference photo's backdrop, the generator's last draw
    return {"background": (ca, cb), "theta": theta, "shake": shake, "size": (size0, size1), "p0": p0, "p1": p1,
            "rotation": (rot0, rot1), "products": {"template": product_a, "target": product_b}, "gain": gain,
            "aspect": product_a.aspect, "backdrop": backdrop}


def clip_labels(params: dict, clip: str) -> tuple[np.ndarray, np.ndarray]:
    """Class indices (shape, pattern, angle, period) and regression targets of the ``clip`` (template/target)."""
    p = params["products"][clip]
    classes = np.array([SHAPES.index(p.shape), PATTERNS.index(p.pattern),
                        int(np.argmin([abs(p.pattern_angle - a) for a in ANGLES])), PERIODS.index(p.pattern_period)])
    rot0, rot1 = params["rotation"]
    values = np.concatenate([
        *p.colors, *params["background"], [math.cos(params["theta"]), math.sin(params["theta"])], params["size"],
        params["p0"], params["p1"], [rot0, rot1 - rot0, params["aspect"]], params["gain"][1:],
        [np.sqrt((params["shake"][1:] ** 2).mean())],
    ])
    return classes, values.astype(np.float32)


def render_clips(config: SyntheticConfig, seeds) -> dict[str, torch.Tensor]:
    """Template and target clips of ``seeds`` with masks and labels, checking the re-derived parameters."""
    gen = SyntheticVideoGenerator(config)
    videos, masks, classes, values = [], [], [], []
    for seed in seeds:
        ex = gen.example(int(seed))
        params = clip_parameters(config, int(seed))
        if abs(params["backdrop"] - float(ex.reference[0, 0, 0])) > 1e-5:
            raise RuntimeError(f"clip_parameters no longer repeats SyntheticVideoGenerator's draws (seed {seed}); "
                               f"update it to follow pvtt_train/data/synthetic.py")
        for clip, video in (("template", ex.template), ("target", ex.target)):
            c, v = clip_labels(params, clip)
            videos.append(video)
            masks.append(ex.mask)
            classes.append(c)
            values.append(v)
    return {"videos": torch.from_numpy(np.stack(videos)), "mask": torch.from_numpy(np.stack(masks)),
            "classes": torch.from_numpy(np.stack(classes)).long(), "values": torch.from_numpy(np.stack(values))}


# --- degradations: [B,F,H,W,3] in 0..1, per-clip strength in 0..1 -------------------------------------------------

def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of every frame; ``sigma`` [B] in pixels."""
    b, f, h, w, _ = x.shape
    frames = x.reshape(b * f, h, w, 3).permute(0, 3, 1, 2)
    s = sigma.repeat_interleave(f)[:, None].expand(-1, 2).contiguous()
    out = kornia.filters.gaussian_blur2d(frames, (9, 9), s, border_type="reflect")
    return out.permute(0, 2, 3, 1).reshape(x.shape)


def product_region(mask: torch.Tensor) -> torch.Tensor:
    """[B,F,H,W] product mask dilated by 1 px, as [B,F,H,W,1]: the pixels a generator may change."""
    flat = mask.reshape(-1, 1, *mask.shape[2:])
    return F.max_pool2d(flat, 3, 1, 1).reshape(mask.shape)[..., None]


def flat_colour(x: torch.Tensor) -> torch.Tensor:
    """Every frame replaced by its mean colour: all structure gone, colours and light kept."""
    return x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()


def degrade(x: torch.Tensor, mask: torch.Tensor, kind: torch.Tensor, strength: torch.Tensor,
            product_only: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply DEGRADATIONS[kind[i]] at ``strength[i]`` to clip i, to its (1 px dilated) product only where asked.

    Each kind can be told from a single clip: a global colour cast cannot (colours are uniformly
    random), so casts are left to the content heads and the sanity table.
    """
    b, f = x.shape[:2]
    s = strength.view(b, 1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=generator)
    frame_colour = torch.randn(b, f, 1, 1, 3, generator=generator)
    frame_gain = torch.randn(b, f, 1, 1, 1, generator=generator)
    variants = {
        1: blur(x, 0.3 + 1.2 * strength),
        2: x + 0.1 * s * noise,
        3: x * (1 + 0.12 * s * frame_colour),
        4: x * (1 + 0.12 * s * frame_gain),
        5: x + 0.6 * s * (x.mean(dim=(2, 3, 4), keepdim=True) - x),
    }
    out = x
    for k, v in variants.items():
        out = torch.where((kind == k).view(b, 1, 1, 1, 1), v, out)
    region = product_region(mask)
    region = torch.where(product_only.view(b, 1, 1, 1, 1), region, torch.ones_like(region))
    return (region * out + (1 - region) * x).clamp(0, 1)


def sample_degradations(b: int, cfg: EncoderTrainConfig, g: torch.Generator):
    """Per-clip kind (0 = clean), strength in [0.15, 1] (0 when clean) and whether only the product is hit."""
    clean = torch.rand(b, generator=g) < cfg.clean_fraction
    kind = torch.where(clean, 0, torch.randint(1, len(DEGRADATIONS), (b,), generator=g))
    strength = torch.where(clean, 0.0, 0.15 + 0.85 * torch.rand(b, generator=g))
    product_only = torch.rand(b, generator=g) < cfg.product_only_fraction
    return kind, strength, product_only


# --- training -------------------------------------------------------------------------------------------------------

class Heads(nn.Module):
    """Linear read-outs of the feature layer (training only; not saved with the encoder)."""

    def __init__(self, dim: int, values: int):
        super().__init__()
        self.classes = nn.Linear(dim, sum(CLASS_HEADS.values()))
        self.values = nn.Linear(dim, values)
        self.degradation = nn.Linear(dim, len(DEGRADATIONS) + 1)  # logits, then the strength

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        deg = self.degradation(z)
        return {"classes": self.classes(z).split(list(CLASS_HEADS.values()), dim=1), "values": self.values(z),
                "degradation": deg[:, :-1], "strength": deg[:, -1]}


def losses(out: dict, classes: torch.Tensor, values: torch.Tensor, kind: torch.Tensor,
           strength: torch.Tensor) -> dict[str, torch.Tensor]:
    """Content losses on the clean clips of the batch, quality losses on all of them."""
    clean = kind == 0
    content = {name: F.cross_entropy(logits[clean], classes[clean, i])
               for i, (name, logits) in enumerate(zip(CLASS_HEADS, out["classes"]))}
    colours = slice(0, COLOUR_VALUES)
    rest = slice(COLOUR_VALUES, None)
    return {**content, "colours": F.mse_loss(out["values"][clean, colours], values[clean, colours]),
            "values": F.mse_loss(out["values"][clean, rest], values[clean, rest]),
            "degradation": F.cross_entropy(out["degradation"], kind), "strength": F.mse_loss(out["strength"], strength)}


def lr_factor(progress: float, step: int, cfg: EncoderTrainConfig) -> float:
    """Linear warm-up, then cosine decay to 5 % over the step or time budget, whichever runs out first."""
    return min(1.0, (step + 1) / cfg.warmup_steps) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1))))


@torch.no_grad()
def validation(encoder: VideoEncoder, heads: Heads, data: dict, stats: tuple, cfg: EncoderTrainConfig) -> dict:
    """Head accuracies and content R^2 (colours, other values) on held-out clips, each degraded once (seeded)."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    kind, strength, product_only = sample_degradations(len(data["videos"]), cfg, g)
    x = degrade(data["videos"], data["mask"], kind, strength, product_only, g)
    out = heads(encoder.embed(x))
    clean = kind == 0
    acc = {f"{name}_accuracy": float((logits[clean].argmax(1) == data["classes"][clean, i]).float().mean())
           for i, (name, logits) in enumerate(zip(CLASS_HEADS, out["classes"]))}
    target = (data["values"][clean] - stats[0]) / stats[1]
    r2 = 1 - ((out["values"][clean] - target) ** 2).mean(0) / target.var(0).clamp_min(1e-8)
    return {**acc, "colour_r2_mean": float(r2[:COLOUR_VALUES].mean()), "other_r2_mean": float(r2[COLOUR_VALUES:].mean()),
            "degradation_accuracy": float((out["degradation"].argmax(1) == kind).float().mean()),
            "strength_rmse": float((out["strength"] - strength).pow(2).mean().sqrt())}


def sanity_table(encoder: VideoEncoder, config: SyntheticConfig, clips: int) -> dict:
    """FD between two disjoint halves of held-out ground truth, with the second half clean or degraded.

    Every row shares the same sampling noise, so the clean row is the floor a perfect generator
    would reach and the other rows must stand clearly above it. Reported for the first 64 and all
    ``clips`` clips of each half (gates use 64 to 128).
    """
    gen = SyntheticVideoGenerator(config)
    ref = gen.batch(range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + clips))
    other = gen.batch(range(HELDOUT_SEED_BASE + clips, HELDOUT_SEED_BASE + 2 * clips))
    x, mask = torch.from_numpy(other["target"]), torch.from_numpy(other["mask"])
    b = len(x)
    g = torch.Generator().manual_seed(0)
    sigma1 = torch.full((b,), 1.0)
    product = product_region(mask)
    variants = {
        "clean (other held-out clips)": x,
        "templates (other product, same distribution)": torch.from_numpy(other["template"]),
        "blur sigma 1 px": blur(x, sigma1),
        "blur sigma 1 px, product only": product * blur(x, sigma1) + (1 - product) * x,
        "noise std 0.05": (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1),
        "colour cast (+0.08 R, -0.08 B)": (x + torch.tensor([0.08, 0.0, -0.08])).clamp(0, 1),
        "colour cast (+0.2 R, -0.2 B)": (x + torch.tensor([0.2, 0.0, -0.2])).clamp(0, 1),
        "washout (30 % toward the frame mean)": x + 0.3 * (x.mean(dim=(2, 3, 4), keepdim=True) - x),
        "flicker (per-frame gain, std 8 %)": (x * (1 + 0.08 * torch.randn(b, x.shape[1], 1, 1, 1, generator=g))
                                              ).clamp(0, 1),
        "temporal shuffle": torch.stack([v[torch.randperm(v.shape[0], generator=g)] for v in x]),
        "frozen (first frame repeated)": x[:, :1].expand_as(x).contiguous(),
        "flat colour (frame mean)": flat_colour(x),
    }
    ref_feats = encoder.features(torch.from_numpy(ref["target"])).double().numpy()
    table = {}
    for name, v in variants.items():
        feats = encoder.features(v).double().numpy()
        table[name] = {f"fd_{n}": round(frechet_distance(ref_feats[:n], feats[:n]), 3) for n in (64, clips)}
    floor = table["clean (other held-out clips)"]
    for row in table.values():
        row["ratio_to_clean_64"] = round(row["fd_64"] / floor["fd_64"], 2)
    return table


def floor_spread(encoder: VideoEncoder, config: SyntheticConfig, total: int = 1024) -> dict:
    """FD between disjoint clean held-out halves, for 64 and 128 clips each: how much the floor itself varies.

    A gate ratio such as student/teacher is only meaningful well outside this spread.
    """
    gen = SyntheticVideoGenerator(config)
    feats = np.concatenate([encoder.features(torch.from_numpy(gen.batch(range(lo, lo + 128))["target"])).double()
                            for lo in range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + total, 128)])
    spread = {}
    for n in (64, 128):
        fds = [frechet_distance(feats[i:i + n], feats[i + n:i + 2 * n]) for i in range(0, total, 2 * n)]
        spread[f"clips_{n}"] = {"fd": [round(v, 3) for v in fds], "mean": round(float(np.mean(fds)), 3),
                                "std": round(float(np.std(fds)), 3), "max_over_min": round(max(fds) / min(fds), 2)}
    return spread


def train_video_encoder(cfg: EncoderTrainConfig, out: Path, progress=print) -> dict:
    """Train, standardise, evaluate and save the encoder to ``out`` (report also in ``out``.json); returns the report."""
    start = time.monotonic()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    pool = render_clips(cfg.data, range(cfg.pool_seeds))
    stats = (pool["values"].mean(0), pool["values"].std(0).clamp_min(1e-6))
    values = (pool["values"] - stats[0]) / stats[1]
    render_seconds = time.monotonic() - start
    progress(f"rendered {len(pool['videos'])} training clips in {render_seconds:.0f} s")

    encoder = VideoEncoder(cfg.dim, cfg.channels)
    heads = Heads(cfg.dim, values.shape[1])
    params = [*encoder.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    budget = cfg.minutes * 60
    log, running, step = [], {}, 0
    while step < cfg.max_steps and time.monotonic() - start < budget:
        progress_frac = max(step / cfg.max_steps, (time.monotonic() - start) / budget)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(progress_frac, step, cfg)
        idx = torch.randint(len(pool["videos"]), (cfg.batch_size,), generator=g)
        kind, strength, product_only = sample_degradations(cfg.batch_size, cfg, g)
        x = degrade(pool["videos"][idx], pool["mask"][idx], kind, strength, product_only, g)
        parts = losses(heads(encoder.embed(x)), pool["classes"][idx], values[idx], kind, strength)
        loss = sum(parts.values()) + (cfg.colour_weight - 1) * parts["colours"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        step += 1
        for k, v in {"total": loss, **parts}.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        if step % 100 == 0:
            log.append({"step": step, "seconds": round(time.monotonic() - start, 1),
                        **{k: round(v / 100, 4) for k, v in running.items()}})
            running = {}
            progress(f"step {step}: loss {log[-1]['total']:.3f}")
    train_seconds = time.monotonic() - start - render_seconds
    encoder.eval()

    with torch.no_grad():
        clean = pool["videos"][:4096]
        clean_feats = torch.cat([encoder.embed(clean[i:i + 256]) for i in range(0, len(clean), 256)])
    encoder.feature_mean.copy_(clean_feats.mean(0))
    encoder.feature_std.copy_(clean_feats.std(0).clamp_min(1e-6))
    val = render_clips(cfg.data, range(HELDOUT_SEED_BASE + VAL_OFFSET, HELDOUT_SEED_BASE + VAL_OFFSET + cfg.val_clips))
    report = {
        "trainer": "pvtt_train video-encoder",
        "objective": "content heads (generator parameters) on clean clips + degradation kind/strength on all",
        "steps": step, "time_limited": step < cfg.max_steps,
        "render_seconds": round(render_seconds, 1), "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "training_seeds": [0, cfg.pool_seeds], "heldout_seed_base": HELDOUT_SEED_BASE,
        "config": {k: v for k, v in asdict(cfg).items() if k != "data"}, "data": cfg.data.to_dict(),
        "log": log,
        "validation": validation(encoder, heads, val, stats, cfg),
        "sanity_fd": sanity_table(encoder, cfg.data, cfg.sanity_clips),
        "clean_floor_spread": floor_spread(encoder, cfg.data),
    }
    save_video_encoder(out, encoder, report)
    sidecar = json.dumps({"format": METADATA_KEY, "config": encoder.config(), "report": report}, indent=2)
    write_atomic(out.with_suffix(".json"), lambda tmp: Path(tmp).write_text(sidecar + "\n"))
    return report
