"""Per-GPU memory of a distillation, planned from a model's config alone (meta device, no weights read).

``plan(spec, setup)`` counts bytes per GPU by component:

- **model state**, from parameter counts of the real modules built on the meta device: teacher
  (frozen; half precision under mixed precision), student and critic (trainable, fp32 master
  weights), EMA (fp32), AdamW states (2 x fp32 per trainable parameter, student and critic),
  gradients (fp32; DDP's reducer keeps a second, bucketed copy unless ``gradient_as_bucket_view``),
  the frozen VAE, and with the adversarial loss its discriminator head (fp32 weights, gradients and
  AdamW states, whole on every GPU). Under FSDP (FULL_SHARD) every sharded copy is divided by the
  number of GPUs; with parameter offload it lives in host RAM instead.
- **working buffers**: under FSDP the unsharded half-precision parameters of the wrapped block that
  runs, the prefetched next one and the root module's own parameters, plus one block's unsharded
  fp32 gradients; under DDP with autocast, the half-precision weight casts autocast caches for
  trainable weights while one autocast region lasts (student and critic).
- **activations**, an ESTIMATE: the bytes autograd saves for backward, counted by running the real
  transformer (and VAE decoder) forward on the meta device at two small token counts under
  ``saved_tensors_hooks`` and extrapolating linearly in tokens (per sample: ``const + per_token x
  tokens``). Saved attention probabilities are left out, because CUDA's flash and memory-efficient
  SDPA kernels keep only Q, K, V, the output and the log-sum-exp. The probe runs in the compute
  dtype (bf16 under mixed precision; the meta device has no autocast, so fp32 residual streams that
  autocast would keep under DDP are counted at half size). With gradient checkpointing each block
  keeps only its input (``tokens x dim``) and one block's activations are alive again while it is
  recomputed. A generator step holds, per sample, the student's graph at the exit step, the graph
  of the regression loss's second student call, (temporal or identity loss) the VAE decoder's
  graph of the whole clip, (perceptual loss) a second decoder graph, of the regression call's
  clip, and the VAE encoder's graph of it, and (adversarial loss) the critic's graph up to the
  discriminator head's block. The critic's step comes after their backward: its own graph and,
  with the adversarial loss, the discriminator's batch of real, fake and perturbed real clips
  through the same cut critic. The plan holds the larger of the two.
- an **allowance** for the CUDA context, NCCL buffers and allocator fragmentation: 2 GiB + 5 %.

Tokens are ``latent frames x (H / (s * p_h)) x (W / (s * p_w))`` with the VAE's spatial factor
``s`` and the transformer patch ``p``; Wan-VACE adds one latent frame for the product reference.
For the embedded pixel-space model ``s`` is 1.

``distill`` runs the same plan for the trainer as it is built (``trainer_as_built``: under FSDP the
teacher, in the half dtype under mixed precision, and the EMA are sharded; under DDP both are whole
on every GPU) and refuses a configuration that does not fit, naming the settings that would. The
frozen VAE is one copy in the loaded dtype (fp32), shared by teacher, student and critic.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

GIB = 1 << 30
HALF = ("bf16", "fp16")
#: Placements of the teacher and the EMA copy.
PLACEMENTS = ("sharded", "replicated", "cpu")
EMA_PLACEMENTS = (*PLACEMENTS, "off")


def trainer_as_built(strategy: str, mixed_precision: str, offload: bool = False) -> dict:
    """Where pvtt_train.distill.trainer puts the teacher and the EMA (``distill.sharding``): under FSDP the
    frozen teacher is sharded like the student and the EMA is made over each rank's shards (in host RAM
    with parameter offload, where the shards are); under DDP or one process both are whole on every GPU.
    Under mixed precision the frozen teacher is kept in the half dtype."""
    fsdp = strategy == "fsdp"
    return {"teacher": "sharded" if fsdp else "replicated", "teacher_half": mixed_precision in HALF,
            "ema": ("cpu" if offload else "sharded") if fsdp else "replicated"}


ALLOWANCE_FIXED = 2 * GIB
ALLOWANCE_SHARE = 0.05

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """"80GiB", "80GB", "81920MiB", "85899345920" -> bytes (GB = 10^9, GiB = 2^30)."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a memory size; write a number and a unit, e.g. 80GiB, 80GB or 81920MiB")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "B").lower()]
    if value <= 0:
        raise ValueError(f"{text!r}: a memory size must be above 0, e.g. 80GiB")
    return int(value)


def gib(n: float) -> float:
    return n / GIB


# --- the model ------------------------------------------------------------------------------------------------

@dataclass
class ModelSpec:
    """What the plan needs to know about a model: its PVTT config, prompt length and native clip."""

    name: str
    config: dict  # PVTT model config: {"arch": ..., ...} (as in checkpoint metadata)
    video: dict  # frames, height, width
    text_encoder: dict | None = None  # UMT5 config, when prompts are encoded by the run


def model_spec(source: str) -> ModelSpec:
    """A named published size (``wan2.1-vace-1.3b``, ``wan2.1-vace-14b``), a diffusers Wan-VACE folder
    or a PVTT ``.safetensors`` file; reads configs and headers only."""
    from .errors import CheckpointError, InputError
    from .models import wan_configs

    if source.lower() in wan_configs.TRANSFORMERS:
        config = wan_configs.named_config(source)
        return ModelSpec(source.lower(), config, dict(wan_configs.NATIVE_VIDEO), config.pop("text_encoder"))
    path = Path(source)
    if not path.exists():
        raise InputError(f"--model {source}: not found; pass a Wan-VACE diffusers folder, a PVTT .safetensors file, "
                         f"or one of {', '.join(wan_configs.TRANSFORMERS)}")
    if path.is_dir():
        return _folder_spec(path)
    from .models import native_wan
    from .models.checkpoint import read_metadata

    if native_wan.is_native_file(path) is not None:  # a ComfyUI-native file: configs from its headers
        from .models.loading import native_model_description
        from .models.wan_configs import PROMPT_TOKENS

        config, video = native_model_description(path)
        return ModelSpec(path.name, {**config, "context_tokens": PROMPT_TOKENS}, video)
    meta = read_metadata(path)
    if "arch" not in meta["model"]:
        raise CheckpointError(f"{path.name}: its metadata has no model architecture; export it again with pvtt_train")
    return ModelSpec(path.name, meta["model"], dict(meta["video"]))


def _folder_spec(folder: Path) -> ModelSpec:
    from .models.loading import DEFAULT_VIDEO, check_folder, read_json, read_settings
    from .models.wan_configs import PROMPT_TOKENS

    check_folder(folder)
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    config = {"arch": "wan_vace", "transformer": strip(read_json(folder / "transformer" / "config.json")),
              "vae": strip(read_json(folder / "vae" / "config.json")), "context_tokens": PROMPT_TOKENS}
    text_path = folder / "text_encoder" / "config.json"
    text = read_json(text_path) if text_path.is_file() else None
    video = {**DEFAULT_VIDEO, **read_settings(folder).get("video", {})}
    return ModelSpec(folder.name, config, video, text)


@dataclass
class Counts:
    """Parameter counts of a model built on the meta device."""

    trainable: int  # the denoiser (transformer) and the context embedding
    vae: int
    text_encoder: int
    largest_block: int  # the biggest FSDP-wrapped unit (a transformer block)
    root: int  # parameters outside the blocks (stay in the root FSDP unit)
    blocks: int  # transformer blocks the activations run through (VACE blocks included)
    dim: int
    discriminator_head: int  # the adversarial loss's head on the critic's tokens (``DiscriminatorHead``)


def _meta_model(config: dict):
    import torch

    from .models.pvtt_model import build_model

    with torch.device("meta"):
        return build_model(config)


def check_video(spec: ModelSpec, model, frames: int, height: int, width: int) -> None:
    """Raise ValueError, with the sizes that would do, for a clip ``model`` (``spec``'s, built on the meta device)
    cannot take (Wan: ``wan_vace.check_clip_shape``; the embedded model: whole transformer patches), so no plan is
    made for a clip that training would refuse or silently crop."""
    if hasattr(model, "check_clip"):
        model.check_clip(frames, height, width)
        return
    p_t, p_h, p_w = spec.config["backbone_config"].get("patch_size", [1, 2, 2])
    if frames % p_t or height % p_h or width % p_w:
        raise ValueError(f"clip {frames} x {height} x {width} (frames x height x width) must be a multiple of the "
                         f"transformer patch {p_t} x {p_h} x {p_w}")


def _denoiser(model):
    return getattr(model, model.denoiser_attr)


def count_parameters(spec: ModelSpec, model=None) -> Counts:
    """Counts from the real modules, instantiated on the meta device (no memory, no weights); ``model``: those
    modules when already built."""
    import torch

    from .distill.adversarial import DiscriminatorHead

    model = model if model is not None else _meta_model(spec.config)
    denoiser = _denoiser(model)
    vae = getattr(model, "vae", None)
    vae_ids = {id(p) for p in vae.parameters()} if vae is not None else set()
    trainable = sum(p.numel() for p in model.parameters() if id(p) not in vae_ids)
    blocks = list(denoiser.blocks) + list(getattr(denoiser, "vace_blocks", []))
    sizes = [sum(p.numel() for p in b.parameters()) for b in blocks]
    text = 0
    if spec.text_encoder:
        from transformers import UMT5Config, UMT5EncoderModel

        keys = set(UMT5Config().to_dict())
        with torch.device("meta"):
            encoder = UMT5EncoderModel(UMT5Config(**{k: v for k, v in spec.text_encoder.items() if k in keys}))
        text = sum(p.numel() for p in encoder.parameters())
    dim = denoiser.config.num_attention_heads * denoiser.config.attention_head_dim
    with torch.device("meta"):
        head = sum(p.numel() for p in DiscriminatorHead(dim, head_block(len(denoiser.blocks))).parameters())
    return Counts(trainable=trainable, vae=sum(p.numel() for p in vae.parameters()) if vae is not None else 0,
                  text_encoder=text, largest_block=max(sizes), root=trainable - sum(sizes), blocks=len(blocks),
                  dim=dim, discriminator_head=head)


# --- activations, measured on the meta device ------------------------------------------------------------------

def _saved_bytes(run, params, attention_lengths: tuple[int, ...]) -> int:
    """Bytes autograd saves for backward while ``run()`` executes (parameters and attention
    probabilities, which flash/efficient SDPA does not keep, left out; shared storages counted once)."""
    import torch

    skip = {p.untyped_storage()._cdata for p in params}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        is_probs = t.ndim >= 3 and t.shape[-2] in attention_lengths and t.shape[-1] in attention_lengths
        if storage._cdata not in skip and not is_probs:
            seen[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


@dataclass
class ActivationModel:
    """Per-sample activation bytes ``const + per_token x tokens`` of one denoiser call with gradients."""

    const: int
    per_token: float
    per_token_block: float  # one block's share of per_token

    def bytes(self, tokens: int) -> int:
        return int(self.const + self.per_token * tokens)


_PROBE_LAYOUT = ((2, 6, 10), (4, 6, 10))  # (frames, h, w) in latent cells: 120 and 240 tokens with patch 1x2x2


def _probe_denoiser(config: dict, layers: int, dtype):
    """The model's denoiser with ``layers`` blocks (one VACE block per two), on the meta device."""
    model = _meta_model(_probe_config(config, layers))
    return _denoiser(model).to(dtype), model


def _probe_config(config: dict, layers: int) -> dict:
    probe = json.loads(json.dumps(config))
    key = "transformer" if probe["arch"] == "wan_vace" else "backbone_config"
    probe[key]["num_layers"] = layers
    if "vace_layers" in probe[key]:
        probe[key]["vace_layers"] = list(range(0, layers, 2))
    return probe


def measure_activations(spec: ModelSpec, half: bool, checkpointing: bool) -> ActivationModel:
    """Fit ``const + per_token x tokens`` to saved bytes of a 2- and a 4-layer probe at 120 and 240 tokens."""
    return _fit_probes(spec, half, checkpointing, lambda denoiser, layers, call: call(), count_blocks)


def measure_discriminator_activations(spec: ModelSpec, half: bool, checkpointing: bool) -> ActivationModel:
    """Saved bytes of one discriminator call (``distill.adversarial``): the critic run with gradients up to the
    head's block, cut there as training cuts it (``tokens_after``), and the head on that block's tokens.

    All VACE blocks run before the first main block, so the cut run keeps them all (``blocks_to_head``)."""
    import torch

    from .distill.adversarial import DiscriminatorHead, tokens_after

    def discriminate(denoiser, layers: int, call):
        block = head_block(layers)
        with torch.device("meta"):
            head = DiscriminatorHead(denoiser.config.num_attention_heads * denoiser.config.attention_head_dim, block)
        return head(tokens_after(denoiser.blocks[block], call))

    return _fit_probes(spec, half, checkpointing, discriminate, blocks_to_head)


def head_block(layers: int) -> int:
    """The critic block the discriminator head reads (``DiscriminatorHead.for_critic``: the middle one)."""
    return layers // 2


def blocks_to_head(config: dict) -> int:
    """Transformer blocks a discriminator call runs: every VACE block, then the main ones up to the head's."""
    key = "transformer" if config["arch"] == "wan_vace" else "backbone_config"
    return head_block(int(config[key]["num_layers"])) + 1 + len(config[key].get("vace_layers", []))


def _fit_probes(spec: ModelSpec, half: bool, checkpointing: bool, run, blocks) -> ActivationModel:
    """Saved bytes of ``run(denoiser, layers, call)`` (``call()`` runs the probe denoiser once) for probes of 2 and
    4 layers at two token counts, fitted per token and per block and extrapolated to ``blocks(config)`` blocks of
    the real model."""
    import torch

    dtype = torch.bfloat16 if half else torch.float32
    context = int(spec.config.get("context_tokens", 1))
    measured = {}
    for layers in (2, 4):
        denoiser, model = _probe_denoiser(spec.config, layers, dtype)
        denoiser.train()
        if checkpointing:
            denoiser.enable_gradient_checkpointing()
        cfg = denoiser.config
        p_t, p_h, p_w = cfg.patch_size
        for frames, h, w in _PROBE_LAYOUT:
            tokens = frames // p_t * (h // p_h) * (w // p_w)
            x = torch.zeros(1, cfg.in_channels, frames, h, w, device="meta", dtype=dtype)
            kwargs = {"hidden_states": x, "timestep": torch.zeros(1, device="meta"),
                      "encoder_hidden_states": torch.zeros(1, context, cfg.text_dim, device="meta", dtype=dtype),
                      "return_dict": False}
            if hasattr(cfg, "vace_in_channels"):
                kwargs["control_hidden_states"] = torch.zeros(1, cfg.vace_in_channels, frames, h, w, device="meta",
                                                              dtype=dtype)
            measured[layers, tokens] = _saved_bytes(lambda: run(denoiser, layers, lambda: denoiser(**kwargs)),
                                                    list(model.parameters()), (tokens, context))
    (t1, t2) = sorted({t for _, t in measured})
    blocks_of = {layers: blocks(_probe_config(spec.config, layers)) for layers in (2, 4)}
    slope = {layers: (measured[layers, t2] - measured[layers, t1]) / (t2 - t1) for layers in (2, 4)}
    const = {layers: measured[layers, t1] - slope[layers] * t1 for layers in (2, 4)}
    extra = blocks_of[4] - blocks_of[2]
    per_block, const_per_block = (slope[4] - slope[2]) / extra, (const[4] - const[2]) / extra
    real = blocks(spec.config)
    return ActivationModel(const=int(max(0.0, const[2] + const_per_block * (real - blocks_of[2]))),
                           per_token=slope[2] + per_block * (real - blocks_of[2]), per_token_block=per_block)


def count_blocks(config: dict) -> int:
    key = "transformer" if config["arch"] == "wan_vace" else "backbone_config"
    return int(config[key]["num_layers"]) + len(config[key].get("vace_layers", []))


def measure_decoder_activations(spec: ModelSpec, half: bool) -> float:
    """Saved bytes per output pixel-frame of the VAE decoder run with gradients (meta-device probe)."""
    import torch
    from diffusers import AutoencoderKLWan

    if spec.config["arch"] != "wan_vace":
        return 0.0  # pixel-space model: nothing to decode
    dtype = torch.bfloat16 if half else torch.float32
    with torch.device("meta"):
        vae = AutoencoderKLWan.from_config(spec.config["vae"]).to(dtype)
    s, t = 2 ** len(vae.config.temperal_downsample), 2 ** sum(vae.config.temperal_downsample)
    h, w = _PROBE_LAYOUT[0][1:]
    saved = []
    for frames in (2, 3):
        z = torch.zeros(1, vae.config.z_dim, frames, h, w, device="meta", dtype=dtype, requires_grad=True)
        saved.append(_saved_bytes(lambda: vae.decode(z, return_dict=False), list(vae.parameters()), (h * w,)))
    return (saved[1] - saved[0]) / (t * h * s * w * s)


def measure_encoder_activations(spec: ModelSpec, half: bool) -> float:
    """Saved bytes per input pixel-frame of the VAE encoder run with gradients (meta-device probe): the perceptual
    loss's feature extractor for a latent model (``distill.perceptual``; LPIPS's AlexNet, used instead when its
    weights are on disk, keeps less)."""
    import torch
    from diffusers import AutoencoderKLWan

    if spec.config["arch"] != "wan_vace":
        return 0.0  # pixel-space model: no encoder
    dtype = torch.bfloat16 if half else torch.float32
    with torch.device("meta"):
        vae = AutoencoderKLWan.from_config(spec.config["vae"]).to(dtype)
    s, t = 2 ** len(vae.config.temperal_downsample), 2 ** sum(vae.config.temperal_downsample)
    h, w = (side * s for side in _PROBE_LAYOUT[0][1:])
    saved = []
    for frames in (1 + t, 1 + 2 * t):  # the causal encoder takes the first frame alone, then t at a time
        x = torch.zeros(1, 3, frames, h, w, device="meta", dtype=dtype, requires_grad=True)
        saved.append(_saved_bytes(lambda: vae.encode(x).latent_dist.mode(), list(vae.parameters()), ()))
    return (saved[1] - saved[0]) / (t * h * w)


# --- the plan -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    """A distillation's memory-relevant settings."""

    gpus: int = 1
    gpu_memory: int = 80 * GIB
    strategy: str = "ddp"  # "ddp" (also one process) or "fsdp" (FULL_SHARD)
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = False
    batch_size: int = 1
    frames: int | None = None  # None: the model's native clip
    height: int | None = None
    width: int | None = None
    teacher: str = "sharded"  # "sharded" (FSDP only), "replicated" or "cpu"
    teacher_half: bool = True  # the frozen teacher cast to the half dtype under mixed precision
    ema: str = "sharded"  # "sharded" (FSDP only), "replicated", "cpu" or "off"
    offload: bool = False  # FSDP parameter offload: sharded weights, gradients and AdamW states in host RAM
    regression: bool = True  # the regression loss (a second student call with gradients; the perceptual loss's too)
    pixel_losses: bool = True  # temporal / identity: the student's clip decoded with gradients
    perceptual: bool = False  # the perceptual loss: the regression call's clip decoded and re-encoded with gradients
    guide_parameters: int = 0  # an autoguided teacher's guide (``distill --guide-model``), frozen as the teacher is
    #: Clips per sample that the adversarial loss's discriminator step sends through the critic: real, fake and,
    #: with R1 (``StageConfig.r1_weight`` > 0, the default), the perturbed real ones; 0 without the adversarial loss.
    discriminator_inputs: int = 0

    def checked(self) -> "Setup":
        """Sharding only exists under FSDP: 'sharded' means 'replicated' under DDP."""
        if self.strategy == "fsdp":
            return self
        return replace(self, teacher="replicated" if self.teacher == "sharded" else self.teacher,
                       ema="replicated" if self.ema == "sharded" else self.ema, offload=False)


@dataclass
class Plan:
    model: str
    setup: dict
    parameters: dict
    tokens: int
    video: dict
    gpu: dict  # component -> bytes per GPU
    host: dict  # component -> bytes of host RAM per process
    total: int
    fits: bool
    alternatives: list = field(default_factory=list)  # [(flags, total)] that fit

    def to_json(self) -> dict:
        return asdict(self)


def tokens_for(config: dict, frames: int, height: int, width: int) -> int:
    """Transformer tokens of one clip (see the module docstring)."""
    if config["arch"] == "wan_vace":
        from .models.wan_vace import REFERENCE_FRAMES, latent_frames

        vae, tr = config["vae"], config["transformer"]
        s, t = 2 ** len(vae["temperal_downsample"]), 2 ** sum(vae["temperal_downsample"])
        p_t, p_h, p_w = tr.get("patch_size", [1, 2, 2])
        return (latent_frames(frames, t) + REFERENCE_FRAMES) // p_t * (height // (s * p_h)) * (width // (s * p_w))
    p_t, p_h, p_w = config["backbone_config"].get("patch_size", [1, 2, 2])
    return frames // p_t * (height // p_h) * (width // p_w)


class Planner:
    """Plans one model under many setups; the meta-device measurements are made once per precision."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self._model = _meta_model(spec.config)  # built once: counted here, and checked against clip sizes
        self.counts = count_parameters(spec, self._model)
        self._activations: dict = {}
        self._discriminator: dict = {}
        self._decoder: dict = {}
        self._encoder: dict = {}

    def check_video(self, frames: int, height: int, width: int) -> None:
        """``check_video`` on this planner's model."""
        check_video(self.spec, self._model, frames, height, width)

    def activations(self, half: bool, checkpointing: bool) -> ActivationModel:
        if (half, checkpointing) not in self._activations:
            self._activations[half, checkpointing] = measure_activations(self.spec, half, checkpointing)
        return self._activations[half, checkpointing]

    def discriminator(self, half: bool, checkpointing: bool) -> ActivationModel:
        if (half, checkpointing) not in self._discriminator:
            self._discriminator[half, checkpointing] = measure_discriminator_activations(self.spec, half,
                                                                                         checkpointing)
        return self._discriminator[half, checkpointing]

    def decoder(self, half: bool) -> float:
        if half not in self._decoder:
            self._decoder[half] = measure_decoder_activations(self.spec, half)
        return self._decoder[half]

    def encoder(self, half: bool) -> float:
        if half not in self._encoder:
            self._encoder[half] = measure_encoder_activations(self.spec, half)
        return self._encoder[half]

    def plan(self, setup: Setup, alternatives: bool = True) -> Plan:
        s = setup.checked()
        c = self.counts
        n = s.gpus
        fsdp = s.strategy == "fsdp"
        half = s.mixed_precision in HALF
        video = {"frames": s.frames or self.spec.video["frames"], "height": s.height or self.spec.video["height"],
                 "width": s.width or self.spec.video["width"]}
        tokens = tokens_for(self.spec.config, **video)
        p = c.trainable
        shard = n if fsdp else 1
        gpu, host = {}, {}

        frozen_bytes = 2 if half and s.teacher_half else 4

        def frozen(parameters: int) -> tuple[float, float]:
            """(GPU, host) bytes of a frozen copy placed as the teacher is: the teacher, and an autoguided
            teacher's guide."""
            size = parameters * frozen_bytes
            return {"sharded": (size / shard, 0), "replicated": (size, 0), "cpu": (0, size)}[s.teacher]

        gpu["teacher"], host["teacher"] = frozen(p)
        if s.guide_parameters:
            gpu["guide"], host["guide"] = frozen(s.guide_parameters)
        state = {"student": 4 * p, "critic": 4 * p, "optimizer_states": 2 * 2 * 4 * p, "gradients": 2 * 4 * p}
        if not fsdp and n > 1:
            state["gradients"] *= 2  # DDP's reducer buckets: a second copy of every gradient
        for name, size in state.items():
            gpu[name], host[name] = (0, size / shard) if s.offload else (size / shard, 0)
        ema = 4 * p
        gpu["ema"], host["ema"] = {"sharded": (ema / shard, 0), "replicated": (ema, 0), "cpu": (0, ema / shard),
                                   "off": (0, 0)}[s.ema]
        gpu["vae"] = c.vae * 4  # one fp32 copy, shared by teacher, student and critic
        half_bytes = 2 if half else 4
        if fsdp:
            gpu["working_buffers"] = (2 * c.largest_block + c.root) * half_bytes + c.largest_block * 4
        else:
            gpu["working_buffers"] = 2 * p * half_bytes if half else 0  # autocast's weight casts, student + critic
        if s.discriminator_inputs:  # the head: fp32 weights, gradients and two AdamW states, on every GPU
            gpu["discriminator"] = 16 * c.discriminator_head
        act = self.activations(half, s.gradient_checkpointing).bytes(tokens)
        generator_turn = (1 + (s.regression or s.perceptual)) * act
        pixel_frames = video["frames"] * video["height"] * video["width"]
        if s.pixel_losses:
            generator_turn += self.decoder(half) * pixel_frames
        if s.perceptual:  # a second decode, of the regression call's clip, and its features
            generator_turn += (self.decoder(half) + self.encoder(half)) * pixel_frames
        critic_turn = act
        if s.discriminator_inputs:
            discriminator = self.discriminator(half, s.gradient_checkpointing).bytes(tokens)
            generator_turn += discriminator  # the generator's adversarial term, beside its other graphs
            critic_turn += s.discriminator_inputs * discriminator  # one batch beside the critic's own graph
        per_sample = max(generator_turn, critic_turn)
        if s.gradient_checkpointing:  # one block's full activations, alive again while it is recomputed
            per_sample += self.activations(half, False).per_token_block * tokens
        gpu["activations"] = s.batch_size * per_sample
        subtotal = sum(gpu.values())
        gpu["allowance"] = ALLOWANCE_FIXED + ALLOWANCE_SHARE * subtotal
        gpu = {k: int(v) for k, v in gpu.items()}
        host = {k: int(v) for k, v in host.items() if v}
        total = sum(gpu.values())
        result = Plan(model=self.spec.name, setup=asdict(s), parameters=asdict(c), tokens=tokens, video=video,
                      gpu=gpu, host=host, total=total, fits=total <= s.gpu_memory)
        if not result.fits and alternatives:
            result.alternatives = self.what_fits(setup)
        return result

    def what_fits(self, setup: Setup) -> list[tuple[str, int]]:
        """Settings that would fit, as flags: each change alone, then changes added up cumulatively."""
        steps = []
        if setup.strategy != "fsdp" and setup.gpus > 1:
            steps.append(("FSDP (configs/accelerate/fsdp_wan_*.yaml)", {"strategy": "fsdp"}))
        if not setup.gradient_checkpointing:
            steps.append(("--gradient-checkpointing", {"gradient_checkpointing": True}))
        if setup.mixed_precision not in HALF:
            steps.append(("--mixed-precision bf16", {"mixed_precision": "bf16"}))
        if setup.batch_size > 1:
            steps.append(("--batch-size 1", {"batch_size": 1}))
        if setup.ema != "off":
            steps.append(("--ema-decay 0 (no EMA)", {"ema": "off"}))
        if setup.gpus > 1 and not setup.offload:
            steps.append(("FSDP parameter offload (fsdp_offload_params: true)", {"strategy": "fsdp", "offload": True}))
        if setup.pixel_losses or setup.perceptual:
            steps.append(("no pixel-space losses (temporal, identity, perceptual)",
                          {"pixel_losses": False, "perceptual": False}))
        if setup.discriminator_inputs:
            steps.append(("no adversarial loss", {"discriminator_inputs": 0}))
        steps.append((f"{setup.gpus * 8} GPUs", {"gpus": setup.gpus * 8}))
        found = []
        for name, change in steps:
            alone = self.plan(replace(setup, **change), alternatives=False)
            if alone.fits:
                found.append((name, alone.total))
        frames = self.spec.video["frames"] if setup.frames is None else setup.frames
        lengths = [None] + [f for f in (49, 33, 17) if f < frames]
        for length in lengths:  # all changes together (then shorter clips), pruned to the ones needed
            chosen = list(steps) + ([(f"clips of {length} frames", {"frames": length})] if length else [])
            if not self._fits(setup, chosen):
                continue
            for step in reversed(list(chosen)):  # the costliest changes (listed last) go first
                if len(chosen) > 1 and self._fits(setup, [c for c in chosen if c is not step]):
                    chosen.remove(step)
            if len(chosen) > 1:
                found.append((" + ".join(name for name, _ in chosen), self._combined(setup, chosen).total))
            break
        return found

    def _combined(self, setup: Setup, chosen) -> Plan:
        changes = {}
        for _, change in chosen:
            changes.update(change)
        return self.plan(replace(setup, **changes), alternatives=False)

    def _fits(self, setup: Setup, chosen) -> bool:
        return self._combined(setup, chosen).fits


def plan_from_accelerate_yaml(planner: Planner, yaml_path: str | Path, **settings) -> Plan:
    """The plan of an accelerate config file (strategy, processes, mixed precision, offload) plus
    PVTT's own settings (``gradient_checkpointing``, ``batch_size``, ``ema``, ...)."""
    import yaml

    cfg = yaml.safe_load(Path(yaml_path).read_text())
    fsdp = cfg.get("distributed_type") == "FSDP"
    fsdp_cfg = cfg.get("fsdp_config") or {}
    setup = Setup(gpus=int(cfg.get("num_processes", 1)), strategy="fsdp" if fsdp else "ddp",
                  mixed_precision=cfg.get("mixed_precision", "no"),
                  offload=bool(fsdp_cfg.get("fsdp_offload_params", False)), **settings)
    return planner.plan(setup)


# --- output ---------------------------------------------------------------------------------------------------

ROWS = ("teacher", "guide", "student", "critic", "discriminator", "ema", "optimizer_states", "gradients", "vae",
        "working_buffers", "activations", "allowance")


def count(n: int) -> str:
    """A parameter count readable at any size: 17.338 B, 126.9 M, 58.2 k."""
    for scale, unit, digits in ((1e9, "B", 3), (1e6, "M", 1), (1e3, "k", 1)):
        if n >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return str(n)


def format_plan(plan: Plan) -> str:
    """The plan as markdown: per-GPU table, host RAM, verdict, and what would fit."""
    s, v = plan.setup, plan.video
    lines = [f"### {plan.model}: {s['gpus']} GPU(s) x {gib(s['gpu_memory']):.0f} GiB, {s['strategy'].upper()}, "
             f"{s['mixed_precision']}, gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}",
             "",
             f"{count(plan.parameters['trainable'])} trainable parameters (student and critic each), "
             f"VAE {count(plan.parameters['vae'])}; batch {s['batch_size']} per GPU of "
             f"{v['frames']} x {v['height']} x {v['width']} = {plan.tokens} tokens; teacher {s['teacher']}, "
             f"EMA {s['ema']}{', parameters offloaded to CPU' if s['offload'] else ''}"
             + (f"; adversarial loss, its discriminator batch {s['discriminator_inputs']} clips per sample"
                if s['discriminator_inputs'] else "") + ".",
             "", "| component | GiB per GPU |", "|---|---:|"]
    lines += [f"| {name} | {gib(plan.gpu[name]):.2f} |" for name in ROWS if name in plan.gpu]
    lines += [f"| **total** | **{gib(plan.total):.2f}** |", ""]
    if plan.host:
        lines.append("Host RAM per process: " + ", ".join(f"{k} {gib(b):.1f} GiB" for k, b in plan.host.items())
                     + f" (total {gib(sum(plan.host.values())):.1f} GiB).")
    if plan.parameters["text_encoder"]:
        lines.append(f"The text encoder ({count(plan.parameters['text_encoder'])} parameters, "
                     f"{gib(2 * plan.parameters['text_encoder']):.1f} GiB in bf16) runs before training and is freed "
                     f"once the prompt embeddings are cached; it is not in the total.")
    verdict = "FITS" if plan.fits else "DOES NOT FIT"
    lines.append(f"**{verdict}**: {gib(plan.total):.1f} GiB of {gib(s['gpu_memory']):.0f} GiB per GPU. "
                 f"Activations are an estimate (see `pvtt_train/memory_plan.py`).")
    if not plan.fits:
        if plan.alternatives:
            lines.append("Would fit: " + "; ".join(f"{name} ({gib(total):.1f} GiB)"
                                                   for name, total in plan.alternatives))
        else:
            lines.append("No single change tried here fits; use more GPUs with FSDP and parameter offload, "
                         "or shorter clips.")
    return "\n".join(lines)


def refusal(plan: Plan) -> str:
    """One-paragraph error of a plan that does not fit (for ``distill``)."""
    s = plan.setup
    worst = sorted(((b, k) for k, b in plan.gpu.items()), reverse=True)[:3]
    text = (f"this run needs about {gib(plan.total):.1f} GiB per GPU but each has {gib(s['gpu_memory']):.1f} GiB "
            f"({s['gpus']} process(es), {s['strategy']}, {s['mixed_precision']}, batch {s['batch_size']}, "
            f"{plan.video['frames']}x{plan.video['height']}x{plan.video['width']}; largest: "
            + ", ".join(f"{k} {gib(b):.1f}" for b, k in worst) + " GiB).")
    if plan.alternatives:
        text += " Settings that would fit: " + "; ".join(name for name, _ in plan.alternatives) + "."
    else:
        text += " No single change fits: use FSDP over more GPUs with parameter offload, or shorter clips."
    return text + " See `python -m pvtt_train plan --help`; --skip-memory-check runs anyway."
