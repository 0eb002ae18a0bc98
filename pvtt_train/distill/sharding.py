"""Where a distillation stage keeps its model copies: whole on every device (DDP, one process) or FSDP2 shards.

Under FSDP the stage shards with FSDP2's ``fully_shard`` itself, one unit per transformer block and one for
the denoiser (the Wan transformer), with the settings of accelerate's FSDP plugin (parameter offload,
reshard after forward) and the run's mixed precision (half-precision compute, fp32 gradient reductions).
It does not hand the models to ``accelerator.prepare``: accelerate's FSDP2 preparation moves the whole model
to the meta device and back (``fsdp_cpu_ram_efficient_loading``) and shards its root, which would take the
VAE that teacher, student and critic share with it; and accelerate applies its FSDP plugin to GPUs only,
while the same code runs on CPU with gloo (``ACCELERATE_USE_FSDP=true`` on a multi-process CPU run), which
is how the tests check it.

What is sharded: the student and the critic (fp32 master weights, their gradients and AdamW states), the
frozen teacher (stored in the half dtype under mixed precision) and the EMA (made over each rank's local
shards). What is not: the frozen parts (``frozen_modules``: the VAE), one copy shared by every model, since
they are never trained and are used outside the transformer's forward (encoding, decoding).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch

from ..errors import InputError

HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def fsdp_enabled(acc) -> bool:
    """True under accelerate's FSDP (an FSDP config under ``accelerate launch``), and on a multi-process CPU
    run with ``ACCELERATE_USE_FSDP=true`` (accelerate itself applies FSDP to GPUs only)."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP:
        return True
    return acc.num_processes > 1 and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def half_dtype(acc) -> torch.dtype | None:
    """The autocast dtype of the run's mixed precision, None in full precision."""
    return HALF_DTYPES.get(str(acc.mixed_precision))


def frozen_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The model's direct submodules that hold parameters and none that training updates (a Wan VAE)."""
    trainable = {id(p) for p in model.trainable_parameters()}
    return {name: child for name, child in model.named_children()
            if any(True for _ in child.parameters()) and not any(id(p) in trainable for p in child.parameters())}


def shared_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` whose frozen modules (``frozen_modules``) are the original's own objects:
    one VAE serves teacher, student and critic instead of one copy each."""
    memo = {id(module): module for module in frozen_modules(model).values()}
    return copy.deepcopy(model, memo)


def denoiser_units(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """The FSDP units below the denoiser: its transformer blocks (and Wan VACE blocks)."""
    return [*denoiser.blocks, *getattr(denoiser, "vace_blocks", [])]


@dataclass
class Sharding:
    """How this run shards: the device mesh and FSDP2's settings (``None``: no sharding)."""

    mesh: object
    device: torch.device
    compute_dtype: torch.dtype | None  # half-precision compute under mixed precision
    offload: bool  # parameter offload: sharded weights, gradients and optimizer states in host RAM
    reshard_after_forward: bool = True

    @classmethod
    def of(cls, acc) -> Sharding | None:
        if not fsdp_enabled(acc):
            return None
        from torch.distributed.device_mesh import init_device_mesh

        plugin = getattr(acc.state, "fsdp_plugin", None)
        offload = os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() in ("1", "true", "yes")
        reshard = True
        if plugin is not None:
            offload = offload or type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy" \
                or bool(getattr(plugin.cpu_offload, "offload_params", False))
            reshard = bool(plugin.reshard_after_forward) if isinstance(plugin.reshard_after_forward, bool) else True
        mesh = init_device_mesh(acc.device.type, (acc.num_processes,))
        return cls(mesh=mesh, device=acc.device, compute_dtype=half_dtype(acc), offload=offload,
                   reshard_after_forward=reshard)

    def _kwargs(self, offload: bool, cast: bool = True) -> dict:
        from torch.distributed.fsdp import (
            CPUOffloadPolicy,
            MixedPrecisionPolicy,
            OffloadPolicy,
        )

        policy = MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=torch.float32) \
            if self.compute_dtype is not None and cast else MixedPrecisionPolicy()
        return {"mesh": self.mesh, "mp_policy": policy, "reshard_after_forward": self.reshard_after_forward,
                "offload_policy": CPUOffloadPolicy() if offload else OffloadPolicy()}

    def shard_trainable(self, model: torch.nn.Module) -> None:
        """Shard the model's denoiser in place (each block, then the denoiser); its other parts must be frozen
        (they go to the device whole: the shared frozen modules, and a fixed context as a frozen copy)."""
        from torch.distributed.fsdp import fully_shard

        self._check_only_denoiser_trains(model)
        kwargs = self._kwargs(self.offload)
        denoiser = getattr(model, model.denoiser_attr)
        for unit in [*denoiser_units(denoiser), denoiser]:
            fully_shard(unit, **kwargs)
        frozen = frozen_modules(model)
        for module in frozen.values():
            module.to(self.device)
        replace_parameters_outside(model, frozen, self.device, None)

    def shard_frozen(self, model: torch.nn.Module, device, dtype: torch.dtype | None, keep_fp32: set) -> None:
        """Shard a frozen copy's denoiser in place, unit by unit, casting each unit to ``dtype`` on ``device``
        first (``keep_fp32``: ids of parameters that stay fp32): a unit is whole on the device only while it
        is sharded (never the whole model). Computed in the dtypes it is stored in, as a half-precision
        inference pipeline runs it; it is small once sharded, so it stays on the device (no offload)."""
        from torch.distributed.fsdp import fully_shard

        kwargs = self._kwargs(False, cast=False)
        denoiser = getattr(model, model.denoiser_attr)
        for unit in [*denoiser_units(denoiser), denoiser]:
            _replace_parameters(unit, device, dtype, keep_fp32)
            fully_shard(unit, **kwargs)

    @staticmethod
    def _check_only_denoiser_trains(model: torch.nn.Module) -> None:
        denoiser = {id(p) for p in getattr(model, model.denoiser_attr).parameters()}
        outside = [p for p in model.trainable_parameters() if id(p) not in denoiser]
        if outside:
            raise InputError(f"FSDP shards the model's transformer, but this {model.arch} model also trains "
                             f"{sum(p.numel() for p in outside)} parameters outside it (its context embedding); "
                             f"run it without FSDP (plain `accelerate launch` or one process): it is small")


def _frozen_parameter(p: torch.Tensor, device, dtype: torch.dtype | None, keep_fp32: set) -> torch.nn.Parameter:
    cast = dtype if dtype is not None and id(p) not in keep_fp32 else p.dtype
    return torch.nn.Parameter(p.detach().to(device=device, dtype=cast), requires_grad=False)


def keep_in_fp32(model: torch.nn.Module) -> set:
    """Ids of the denoiser's parameters diffusers keeps in fp32 when it loads a model in half precision
    (``_keep_in_fp32_modules``: Wan's norms, time embedder, modulation tables)."""
    denoiser = getattr(model, model.denoiser_attr)
    keep = set(getattr(denoiser, "_keep_in_fp32_modules", None) or ())
    return {id(p) for name, p in denoiser.named_parameters() if keep & set(name.split("."))}


def _replace_parameters(module: torch.nn.Module, device, dtype: torch.dtype | None, keep_fp32: set) -> None:
    """Give ``module`` its own copies of the parameters it holds directly or through submodules not yet
    sharded, frozen, on ``device`` and in ``dtype`` (None: unchanged); the originals are left as they are."""
    from torch.distributed.fsdp import FSDPModule

    def visit(m: torch.nn.Module, top: bool) -> None:
        if not top and isinstance(m, FSDPModule):
            return  # already sharded, with its own copies
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = _frozen_parameter(p, device, dtype, keep_fp32)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = b.to(device)
        for child in m.children():
            visit(child, False)

    visit(module, True)


def frozen_teacher(model: torch.nn.Module, device, dtype: torch.dtype | None, sharding: Sharding | None):
    """The frozen real score for a stage: ``model`` itself in full precision without sharding (moved to
    ``device``, as before), else a copy whose weights are cast to ``dtype`` (the half dtype under mixed
    precision, as diffusers' training scripts keep frozen models) and whose denoiser is sharded (FSDP) or
    whole on ``device``. The copy shares the original's frozen modules; the original keeps its weights.
    What diffusers keeps in fp32 in a half-precision model (``keep_in_fp32``) stays fp32."""
    if sharding is None and dtype is None:
        return model.to(device).eval().requires_grad_(False)
    # Copies the module structure and buffers; the parameters stay the original's until replaced.
    memo = {id(p): p for p in model.parameters()}
    frozen = frozen_modules(model)
    memo.update({id(module): module for module in frozen.values()})
    teacher = copy.deepcopy(model, memo)
    for module in frozen.values():
        module.to(device)
    keep = keep_in_fp32(teacher)
    if sharding is not None:
        sharding.shard_frozen(teacher, device, dtype, keep)
    replace_parameters_outside(teacher, frozen, device, dtype, keep)
    return teacher.eval().requires_grad_(False)


def replace_parameters_outside(model: torch.nn.Module, frozen: dict, device, dtype,
                               keep_fp32: set = frozenset()) -> None:
    """Frozen copies on ``device`` (cast to ``dtype``, None: unchanged) of the parameters outside the frozen
    modules that are not sharded (a fixed context), and the buffers moved there; frozen modules stay shared."""
    skip = {id(m) for m in frozen.values()}

    def visit(m: torch.nn.Module) -> None:
        if id(m) in skip:
            return
        for name, p in list(m._parameters.items()):
            if p is not None and not hasattr(p, "device_mesh"):
                m._parameters[name] = _frozen_parameter(p, device, dtype, keep_fp32)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = b.to(device)
        for child in m.children():
            visit(child)

    visit(model)


# --- full (unsharded) state, for training states and the stage's result -------------------------------------

def full_tensor(t: torch.Tensor, keep: bool = True) -> torch.Tensor | None:
    """The whole tensor on CPU (collective for a sharded DTensor: every rank must call it); None where not
    ``keep`` (a rank that does not save)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().cpu() if keep else None


def _options(main_only: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=main_only)


def _without_frozen(model: torch.nn.Module, state: dict) -> dict:
    frozen = tuple(f"{name}." for name in frozen_modules(model))
    return {k: v for k, v in state.items() if not k.startswith(frozen)} if frozen else state


def model_state(model: torch.nn.Module, sharding: Sharding | None) -> dict:
    """What a training state keeps of ``model``: its state dict without the frozen modules (never trained,
    shared with the teacher, restored from it). Sharded, the whole state on the main process's CPU
    (collective; the other ranks get an empty dict)."""
    if sharding is None:
        return _without_frozen(model, model.state_dict())
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return _without_frozen(model, get_model_state_dict(model, options=_options(True)))


def load_model_state(model: torch.nn.Module, state: dict, sharding: Sharding | None) -> None:
    """Restore ``model_state`` (a state that also holds the frozen modules loads too, they are equal); sharded,
    every rank takes its shards from the whole state it read."""
    frozen = tuple(f"{name}." for name in frozen_modules(model))
    if sharding is None:
        missing, unexpected = model.load_state_dict(state, strict=False)
    else:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        missing, unexpected = set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True,
                                                                                          strict=False))
    missing = [k for k in missing if not (frozen and k.startswith(frozen))]
    if missing or unexpected:
        raise RuntimeError(f"the training state does not fit the model: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")


def optimizer_state(model: torch.nn.Module, optimizer, sharding: Sharding | None) -> dict:
    """``optimizer.state_dict()``; sharded, torch's whole optimizer state (keyed by parameter names) on the
    main process's CPU (collective)."""
    if sharding is None:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), options=_options(True))


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict, sharding: Sharding | None) -> None:
    if sharding is None:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), state, options=_options(False))


def ema_state(ema, sharding: Sharding | None, main: bool = True) -> dict:
    """``EMAModel.state_dict()``; sharded, with the whole shadow weights on the main process (collective)."""
    state = ema.state_dict()
    if sharding is not None:
        state["shadow_params"] = [full_tensor(p, keep=main) for p in ema.shadow_params]
    return state


def load_ema_state(ema, state: dict, params: list, sharding: Sharding | None) -> None:
    """Restore an EMA saved by ``ema_state``; sharded, each rank keeps its own shards of the whole weights."""
    ema.load_state_dict(state)
    if sharding is None:
        return
    from torch.distributed.tensor import distribute_tensor

    ema.shadow_params = [
        distribute_tensor(full.to(device=p.to_local().device, dtype=p.dtype), p.device_mesh, p.placements,
                          src_data_rank=None) if hasattr(p, "device_mesh") else full.to(p)
        for full, p in zip(ema.shadow_params, params)]


def unsharded(model: torch.nn.Module, like: torch.nn.Module) -> torch.nn.Module:
    """A plain copy of the sharded ``model`` (built from ``like``, sharing its frozen modules) holding the whole
    weights on CPU, on every rank (collective); what a stage returns under FSDP."""
    plain = shared_copy(like)
    frozen = set(frozen_modules(like))
    state = {k: full_tensor(v) for k, v in model.state_dict().items() if k.split(".")[0] not in frozen}
    missing, unexpected = plain.load_state_dict(state, strict=False)
    if unexpected or any(k.split(".")[0] not in frozen for k in missing):
        raise RuntimeError(f"the sharded model does not match its plain copy: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    return plain


def clip_grad_norm(acc, params: list, max_norm: float, sharding: Sharding | None) -> torch.Tensor:
    """``accelerator.clip_grad_norm_``; sharded, the norm of the whole gradient (a reduction over the shards)."""
    if sharding is None:
        return acc.clip_grad_norm_(params, max_norm)
    from torch.nn.utils import clip_grads_with_norm_, get_total_norm

    acc.unscale_gradients()
    norm = get_total_norm([p.grad for p in params if p.grad is not None], 2.0)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    clip_grads_with_norm_(params, max_norm, norm)
    return norm


def resident_bytes(tensors) -> int:
    """Bytes these tensors hold on this rank (a sharded DTensor: its local shard only)."""
    return sum((t.to_local() if hasattr(t, "to_local") else t).nbytes for t in tensors)


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``model``'s own parameters on this rank; its frozen modules are shared, so not counted."""
    shared = {id(p) for m in frozen_modules(model).values() for p in m.parameters()}
    return resident_bytes(p for p in model.parameters() if id(p) not in shared)
