"""The adapter layer: a frozen base linear plus a low-rank update whose rank can change in place.

    h = base(x) + ((dropout(x) @ A.T) * c) @ B.T * scale

A is (r, in), B is (out, r) — the same layout as PEFT's ``lora_A.weight`` / ``lora_B.weight`` so
that export is a copy. ``c`` is an optional per-rank gate (a method drives it to 0 to free ranks).
``scale`` is fixed when the layer is created (alpha / initial rank) and never follows the current
rank: a resize must not move the output.

``resize`` puts new Parameter objects in place (swapping ``.data`` to a new shape is not safe: autograd
caches the old shape in the parameter's gradient accumulator while any earlier graph is alive). The
returned ``RankChange`` records name the old and the new parameter, and
``dynlora.core.surgery.remap_optimizer_state`` moves each one's slot and moments in the optimizer to its successor.

With a ``capacity`` the layer holds that many rank slots for good: A is (capacity, in), B (out, capacity),
and a 0/1 buffer ``live`` marks the live ranks, always the first ``rank`` slots. Forward multiplies by the
mask and never reads the rank, so parameter shapes and the traced graph stay the same through every resize
(what an engine that shards or compiles the model needs); ``resize`` then rewrites the slots in place and
its ``RankChange`` records name the same parameter as old and new. A dead slot has zero weights and, through
the mask, a zero gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dynlora.core.cost import adapter_cost, input_gate_cost
from dynlora.core.linear import compute_dtype, in_out_features, is_conv1d
from dynlora.core.sharded import is_sharded, whole, write
from dynlora.errors import DynloraError


@dataclass(frozen=True)
class RankChange:
    """One parameter's rank dimension was re-indexed: ``param = cat(old[keep], grow new slots)``."""

    old: nn.Parameter
    param: nn.Parameter
    dim: int
    keep: torch.Tensor  # (k,) long, indices into the old rank dimension
    grow: int


class LoraLayer(nn.Module):
    """A LoRA adapter around an ``nn.Linear`` or ``Conv1D`` whose rank can be pruned and grown."""

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_gate: bool = False,
        generator: torch.Generator | None = None,
        input_gate: bool = False,
        input_gate_bias: float = 4.0,
        dtype: torch.dtype | None = torch.float32,
        capacity: int | None = None,
    ) -> None:
        """``dtype``: the adapter's own weights (float32 masters by default, as PEFT keeps them); None
        takes the base's compute dtype. The base's storage dtype (a quantized int8 / uint8) is never used.
        ``capacity``: rank slots held for good (at least ``rank``); None: the parameters follow the rank."""
        super().__init__()
        if rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        if capacity is not None and capacity < rank:
            raise ValueError(f"capacity {capacity} is below the rank {rank}")
        self.capacity = capacity
        self._live_ranks = rank
        slots = rank if capacity is None else capacity
        self.base = base
        self.in_features, self.out_features = in_out_features(base)
        self.fan_in_fan_out = is_conv1d(base)
        self.quantized = not base.weight.is_floating_point()  # bitsandbytes 4-bit / 8-bit storage
        own = {"dtype": dtype if dtype is not None else compute_dtype(base), "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.zeros(slots, self.in_features, **own))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, slots, **own))
        self.gate = nn.Parameter(torch.ones(slots, **own)) if use_gate else None
        # input-feature gate g(x) = sigmoid(w . x + b): w = 0 and b = 4 give g = 0.982 for every token
        self.gate_w = nn.Parameter(torch.zeros(self.in_features, **own)) if input_gate else None
        self.gate_b = nn.Parameter(torch.full((1,), input_gate_bias, **own)) if input_gate else None
        self.register_buffer("scale", torch.tensor(alpha / max(rank, 1), dtype=torch.float32))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.input_gate_constant: float | None = None  # set: g(x) replaced by this (export approximation)
        self.register_buffer("fade", None)  # optional per-rank multiplier set by a method (not trained)
        live = None if capacity is None else torch.arange(capacity, device=own["device"]) < rank
        self.register_buffer("live", None if live is None else live.to(own["dtype"]))  # (capacity,) 0/1
        # within a fixed capacity a switched-off adapter keeps requires_grad (an engine's parameter set never changes)
        # and this () bool stops its gradients instead (``_held``); not saved: the controller's active set restores it
        on = None if capacity is None else torch.ones((), dtype=torch.bool, device=own["device"])
        self.register_buffer("on", on, persistent=False)
        with torch.no_grad():
            self.lora_A[:rank].copy_(self._init_a(rank, generator))
        self.switched_on = True  # set by ``switch`` (module-level on/off); ``trains`` also needs a rank
        self._follow_trains()
        self._remerge = False
        self._register_load_state_dict_pre_hook(self._take_saved_rank)
        self.register_load_state_dict_post_hook(self._merge_again)
        self.register_state_dict_post_hook(self._unmerged_base)

    def _take_saved_rank(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        """Before ``load_state_dict``: take the rank (and fade) of the saved layer, so that any loader (a
        Trainer resuming a checkpoint, ``from_pretrained``) fills a layer of the right shape. A merged
        layer is unmerged first (the saved base weight is the unmerged one) and merged again after."""
        if self.merged:
            self.unmerge()
            self._remerge = True
        saved = state_dict.get(prefix + "lora_A")
        resized = isinstance(saved, torch.Tensor) and saved.dim() == 2 and saved.shape[0] != self.rank
        if resized and self.capacity is None:  # a fixed capacity loads in place: the saved mask gives the rank
            rank = int(saved.shape[0])
            self.resize(keep=list(range(min(rank, self.rank))), grow=max(0, rank - self.rank))
        if prefix + "fade" in state_dict and self.fade is None:
            self.enable_fade()

    @staticmethod
    def _merge_again(module: nn.Module, incompatible: Any) -> None:
        if module.capacity is not None:  # the loaded mask says which slots live
            module._live_ranks = int(module.live.sum())
            module._follow_trains()
        if module._remerge:
            module._remerge = False
            module.merge()

    @staticmethod
    def _unmerged_base(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        """A merged layer's state_dict holds the base weight without the adapter in it, as an unmerged
        layer's does: whatever saves it (a Trainer checkpoint) loads back right into a fresh model."""
        key = prefix + "base.weight"
        if module.merged and key in state_dict:
            with torch.no_grad():
                delta = module.delta_weight()
                weight = state_dict[key]
                state_dict[key] = weight - (delta.T if module.fan_in_fan_out else delta).to(weight.dtype)

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.lora_A.shape[0] if self.capacity is None else self._live_ranks

    @property
    def slots(self) -> int:
        """Rank slots the parameters hold: the rank, or the capacity."""
        return self.lora_A.shape[0]

    def live_slots(self, t: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """``t`` (a per-slot tensor: A, B along dim 1, a gate, their gradients) at the live ranks only: itself,
        or within a fixed capacity its first ``rank`` slots (a view); a sharded ``t`` is read whole."""
        t = whole(t)
        return t if self.capacity is None else t.narrow(dim, 0, self.rank)

    @torch.no_grad()
    def set_live(self, attr: str, values: torch.Tensor) -> None:
        """Write ``values`` into the live ranks of ``lora_A`` / ``lora_B`` / ``gate`` (each process's shard of a
        sharded one)."""
        param = getattr(self, attr)
        if self.capacity is None and not is_sharded(param):
            param.copy_(values)
            return
        slots = whole(param).clone()
        slots.narrow(1 if attr == "lora_B" else 0, 0, self.rank).copy_(values)
        write(param, slots)

    @property
    def has_input_gate(self) -> bool:
        return self.gate_w is not None

    @property
    def trains(self) -> bool:
        """Whether the adapter's parameters take gradients: switched on and at least one rank (within a fixed
        capacity also at rank 0: the mask gives its slots zero gradients, and a DDP wrapper built around them
        needs no rebuild)."""
        return self.switched_on and (self.rank > 0 or self.capacity is not None)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """A, B, the rank gate and the input gate (those the layer has); not the base's."""
        return [p for p in (self.lora_A, self.lora_B, self.gate, self.gate_w, self.gate_b) if p is not None]

    def switch(self, on: bool) -> None:
        """Switch the adapter's training on or off; off, it still applies its delta, and keeps its weights."""
        self.switched_on = on
        self._follow_trains()

    def _follow_trains(self) -> None:
        """``requires_grad`` of every adapter parameter = ``trains``. A rank-0 forward skips the adapter
        path, so its parameters (the input gate's too) would get no gradient while asking for one: DDP
        without ``find_unused_parameters`` (the HF Trainer's choice under gradient checkpointing) raises.

        Within a fixed capacity every adapter parameter keeps ``requires_grad``, so that what DDP, FSDP2 and a
        compiled graph hold never changes: the ``on`` mask gives a switched-off adapter zero gradients, and
        ``core.switch.SkipSwitchedOff`` drops them before the optimizer steps."""
        on = self.trains
        if self.on is not None:
            self.on.fill_(on)
        for p in self.adapter_parameters():
            p.requires_grad_(on or self.on is not None)
            if not on:
                p.grad = None  # the optimizer skips a parameter without a gradient: no update, state kept

    def _held(self, p: torch.Tensor) -> torch.Tensor:
        """``p`` in forward: itself, or within a fixed capacity with its gradient stopped while switched off
        (the value is ``p`` either way, exactly)."""
        return p if self.on is None else torch.where(self.on, p, p.detach())

    def num_parameters(self) -> int:
        """Trainable adapter parameters at the current rank (A, B, the rank gate, the input gate); zero at rank 0,
        where the input gate is frozen and no export holds it."""
        return adapter_cost(self.in_features, self.out_features, self.rank, "params", gate=self.gate is not None,
                            input_gate=self.has_input_gate)

    def input_gate_parameters(self) -> int:
        return input_gate_cost(self.in_features, self.rank, "params") if self.has_input_gate else 0

    def flops_per_token(self) -> int:
        """Forward FLOPs per token of the adapter path (2 per multiply-add), zero at rank 0 (``core.cost``)."""
        return adapter_cost(self.in_features, self.out_features, self.rank, "flops", gate=self.gate is not None,
                            input_gate=self.has_input_gate)

    def input_gate_flops(self) -> int:
        return input_gate_cost(self.in_features, self.rank, "flops") if self.has_input_gate else 0

    def input_gate_values(self, x: torch.Tensor) -> torch.Tensor:
        """g(x) per token: (..., 1)."""
        assert self.gate_w is not None and self.gate_b is not None
        w, b = self._held(self.gate_w), self._held(self.gate_b)
        return torch.sigmoid(F.linear(x.to(w.dtype), w.unsqueeze(0), b))

    # ---- forward / merge -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._one_cast(x)
        out = self.base(x)
        if self.merged or (self.capacity is None and self.rank == 0):  # a fixed capacity: the mask, never the rank
            return out
        h, g = self._down(x)  # (..., r) = A dropout(x); g: the input gate per token (..., 1), or None
        h, b = self._scaled(h, g)  # the rank gates, fades and input gate folded into h or B
        return self._add(out, F.linear(h, b) * self.scale)  # update (..., out), in the adapter's precision

    def _one_cast(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantized and torch.is_autocast_enabled(x.device.type):
            # one cast for the base and the adapter: autocast would cast x for each matmul, and autograd
            # would keep both low-precision copies for backward (the values are the same either way)
            return x.to(torch.get_autocast_dtype(x.device.type))
        return x

    def _down(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A dropout(x) (..., r), and the input gate g(x) (..., 1) when the layer has one."""
        xd = self.dropout(x)
        if not torch.is_autocast_enabled(x.device.type):  # under autocast the matmuls pick their own dtype
            xd = xd.to(self.lora_A.dtype)
        a = self._held(self.lora_A)
        if self.gate_w is None:
            return F.linear(xd, a), None
        gate_w, gate_b = self._held(self.gate_w), self._held(self.gate_b)
        if self.input_gate_constant is None and isinstance(self.dropout, nn.Identity):
            # one matmul for A and the gate's w: (..., r + 1)
            hx = F.linear(xd, torch.cat([a, gate_w.unsqueeze(0)]))
            return hx[..., : self.slots], torch.sigmoid(hx[..., self.slots:] + gate_b)
        g = self.input_gate_values(x) if self.input_gate_constant is None else self.input_gate_constant
        return F.linear(xd, a), g

    def _scaled(self, h: torch.Tensor, g: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, B) with the per-rank multiplier (gate x fade) and the input gate applied to one of them."""
        b = self._held(self.lora_B)  # (out, r)
        per_rank = self._rank_multiplier(self._held(self.gate) if self.gate is not None else None)
        if per_rank is not None:
            # B diag(c) h == B (c * h): scale whichever is smaller, since autograd keeps the scaled tensor for
            # backward besides h; (out, r) is far smaller than (tokens, r) at training batch sizes
            if h.numel() > b.numel():
                b = b * per_rank
            else:
                h = h * per_rank
        if g is not None:
            # g(x) is one scalar per token, so scaling h (rank space) equals scaling the output, and
            # autograd then keeps (..., r) for backward instead of (..., out)
            h = h * g
        return h, b

    def _add(self, out: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        if self.quantized:  # PEFT's bitsandbytes layers round the update to the base's output dtype, then add
            return out + update.to(out.dtype)
        # PEFT's plain layers add in the adapter's precision and round once: an fp32 master update is not
        # first rounded to a bf16 base's dtype
        return (out + update).to(out.dtype)

    def _rank_multiplier(self, gate: torch.Tensor | None = None) -> torch.Tensor | None:
        """(slots,) gate * fade * live, or None when the layer has none of them; ``gate``: the gate's values to
        use (its whole tensor outside forward, where an engine may have sharded it)."""
        factors = [f for f in (self.gate if gate is None else gate, self.fade, self.live) if f is not None]
        if not factors:
            return None
        out = factors[0]
        for f in factors[1:]:
            out = out * f
        return out

    def gated_b(self) -> torch.Tensor:
        """(out, r) B with the per-rank gate and fade in it (not the scale): B diag(c * fade)."""
        b = whole(self.lora_B)
        per_rank = self._rank_multiplier(whole(self.gate) if self.gate is not None else None)
        return b if per_rank is None else b * per_rank

    def delta_weight(self) -> torch.Tensor:
        """scale * B diag(c * fade) A, shaped like ``nn.Linear.weight``: (out, in)."""
        return (self.gated_b() @ whole(self.lora_A)) * self.scale

    @torch.no_grad()
    def rank_activations(self, x: torch.Tensor) -> torch.Tensor:
        """(positions, r) float32: what B sees for input ``x`` (A x, times the per-rank gate and fade and the
        input gate g(x)), as forward computes it but without dropout."""
        h = F.linear(x.detach().to(self.lora_A.dtype), self.lora_A).reshape(-1, self.slots).float()  # (n, slots)
        if self.gate_w is not None:
            g = self.input_gate_values(x) if self.input_gate_constant is None else self.input_gate_constant
            h = h * (g.reshape(-1, 1).float() if torch.is_tensor(g) else g)
        per_rank = self._rank_multiplier()
        return self.live_slots(h if per_rank is None else h * per_rank.float(), 1)

    @torch.no_grad()
    def update_norm(self, x: torch.Tensor) -> torch.Tensor:
        """0-dim float32 ||dW x|| over every position of ``x``: the norm of the adapter's own output (scale
        included), computed in rank space without forming it: sum_t |B h_t|^2 = sum((H^T H) * (B^T B))."""
        if self.rank == 0:
            return torch.zeros((), dtype=torch.float32, device=self.lora_A.device)
        h = self.rank_activations(x)  # (n, r)
        b = self.live_slots(self.lora_B.detach(), 1).float()  # (out, r)
        square = ((h.T @ h) * (b.T @ b)).sum().clamp(min=0)  # (r, r) Gram matrices, elementwise
        return square.sqrt() * self.scale.float()

    def folded_b(self) -> torch.Tensor:
        """B with gate, fade and scale folded in: (out, r); with it, plain LoRA at scale 1 is exact."""
        return self.gated_b() * self.scale

    def enable_fade(self) -> None:
        """Add the per-rank ``fade`` buffer (all ones): a method can then switch ranks off smoothly."""
        if self.fade is None:
            self.fade = torch.ones(self.slots, dtype=self.lora_A.dtype, device=self.lora_A.device)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the adapter into the base weight; forward then skips the adapter path."""
        if self.merged:
            return
        if self.has_input_gate:
            raise RuntimeError("an input-gated adapter depends on x and cannot be merged into the weight")
        if not self.base.weight.is_floating_point():
            raise RuntimeError(f"the base stores its weight as {self.base.weight.dtype} (quantized): an adapter "
                               "cannot be merged into it; export it as a PEFT adapter instead")
        self._add_to_base(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo ``merge``."""
        if not self.merged:
            return
        self._add_to_base(-self.delta_weight())
        self.merged = False

    def _add_to_base(self, delta: torch.Tensor) -> None:
        w = self.base.weight
        w.data += (delta.T if self.fan_in_fan_out else delta).to(w.dtype)

    # ---- resize ------------------------------------------------------------------------------
    def _init_a(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        # PEFT's default: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in))
        bound = 1.0 / math.sqrt(self.in_features)
        a = torch.rand(n, self.in_features, generator=generator, dtype=torch.float32)
        return ((a * 2 - 1) * bound).to(self.lora_A.device, self.lora_A.dtype)

    @torch.no_grad()
    def resize(self, keep: torch.Tensor | list[int], grow: int = 0,
               generator: torch.Generator | None = None) -> list[RankChange]:
        """Keep ranks ``keep`` (indices, in that order) and append ``grow`` new ranks.

        New ranks get a small random A row, a zero B column and gate 1, so the output does not move;
        a pruned rank leaves the parameters entirely. Returns one ``RankChange`` per parameter for the
        optimizer surgery. The layer must not be merged.
        """
        if self.merged:
            raise RuntimeError("unmerge before resizing")
        keep = torch.as_tensor(keep, dtype=torch.long, device=self.lora_A.device).reshape(-1)
        if grow < 0:
            raise ValueError(f"grow must be >= 0, got {grow}")
        if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= self.rank):
            raise ValueError(f"keep indices must lie in [0, {self.rank}), got {keep.tolist()}")
        if keep.unique().numel() != keep.numel():
            raise ValueError(f"keep indices repeat: {keep.tolist()}")
        if self.capacity is not None:
            return self._resize_in_place(keep, grow, generator)
        if is_sharded(self.lora_A):
            raise DynloraError("the adapters are sharded (FSDP2), so their parameters cannot be replaced by ones of "
                               "another shape; give them a fixed capacity of rank slots (--capacity, "
                               "DynamicLoraConfig(capacity=...))")
        new_a = torch.cat([self.lora_A.index_select(0, keep), self._init_a(grow, generator)], 0)
        b = self.lora_B
        new_b = torch.cat([b.index_select(1, keep), b.new_zeros(self.out_features, grow)], 1)
        changes = [self._swap("lora_A", new_a, 0, keep, grow), self._swap("lora_B", new_b, 1, keep, grow)]
        if self.gate is not None:
            new_c = torch.cat([self.gate.index_select(0, keep), self.gate.new_ones(grow)])
            changes.append(self._swap("gate", new_c, 0, keep, grow))
        if self.fade is not None:
            self.fade = torch.cat([self.fade.index_select(0, keep), self.fade.new_ones(grow)])
        self._follow_trains()  # to rank 0 or back from it: training stops or resumes (if switched on)
        return changes

    def _resize_in_place(self, keep: torch.Tensor, grow: int, generator: torch.Generator | None) -> list[RankChange]:
        """``resize`` within a fixed capacity: the same live ranks in the same order, in the first slots of the
        same parameters; the slots after them zeroed and masked off."""
        n = keep.numel() + grow
        if n > self.capacity:
            raise ValueError(f"{n} ranks do not fit the capacity of {self.capacity} slots")
        changes = []
        for attr, dim, fresh in (("lora_A", 0, self._init_a(grow, generator)), ("lora_B", 1, None),
                                 ("gate", 0, None)):
            param = getattr(self, attr)
            if param is None:
                continue
            slots = whole(param)  # (capacity, in) / (out, capacity) / (capacity,)
            rows = slots.index_select(dim, keep)
            fill = slots.new_ones if attr == "gate" else slots.new_zeros
            if fresh is None:  # B starts at zero (the output does not move), a gate at one
                shape = list(slots.shape)
                shape[dim] = grow
                fresh = fill(shape)
            shape = list(slots.shape)
            shape[dim] = self.capacity - n
            write(param, torch.cat([rows, fresh.to(slots.device, slots.dtype), fill(shape)], dim))  # dead: zero A, B
            changes.append(RankChange(old=param, param=param, dim=dim, keep=keep, grow=grow))
        if self.fade is not None:
            rest = self.fade.new_ones(self.capacity - keep.numel())
            self.fade.copy_(torch.cat([self.fade.index_select(0, keep), rest]))
        self.live.copy_(torch.arange(self.capacity, device=self.live.device) < n)
        self._live_ranks = n
        self._follow_trains()
        return changes

    def _swap(self, attr: str, new: torch.Tensor, dim: int, keep: torch.Tensor, grow: int) -> RankChange:
        old = getattr(self, attr)
        param = nn.Parameter(new.contiguous(), requires_grad=False)  # ``resize`` sets it (``_follow_trains``)
        setattr(self, attr, param)
        return RankChange(old=old, param=param, dim=dim, keep=keep, grow=grow)

    def extra_repr(self) -> str:
        slots = "" if self.capacity is None else f", capacity={self.capacity}"
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}{slots}, gate={self.gate is not None}"
