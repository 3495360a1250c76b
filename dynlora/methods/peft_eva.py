"""PEFT's EVA on the same targets and total rank: LoRA whose ranks and A are chosen from the data at the start.

EVA (Paischer et al., arXiv 2410.07170; PEFT's ``init_lora_weights="eva"`` + ``initialize_lora_eva_weights``)
runs an incremental SVD of each target's inputs over a few training batches, starts A at the top
right-singular vectors (B at zero, so the output does not move) and hands out plain LoRA's total rank,
``r`` x targets, by explained variance: at most ``round(r * rho)`` per module, none to some. PEFT scales each
module's alpha with its rank, so every module keeps LoRA's ``alpha / r``. The ranks never move afterwards, and
the adapter saves as plain PEFT LoRA with a ``rank_pattern`` / ``alpha_pattern``.

At an average rank of 1 EVA mostly does not learn rt-polarity: test accuracy 49.9 / 50.1 / 73.4 % (seeds 0-2;
``bench/results/paymap-minilm-rt-polarity/budget-1``), validation 49.7 % with ``rho`` 1 and 50.3 % with 2, where
plain LoRA at rank 1 reaches 82-83 % (test; on trec6 EVA 82.6 ± 3.5 % against 86.7 ± 1.7 %); at rank 8
(``rho`` 2) EVA reaches 77.9 % on rt-polarity's validation split. Its one
direction per module is the top principal component of the module's inputs, and MiniLM's residual stream has
outlier features: 30-87 % of each rank-1 A row's weight sits on one coordinate (hidden features 63 and 99;
a random A puts about 1/384 on each), so the adapters read the outliers, not the text. This is EVA's own
choice of directions, kept as PEFT makes it: it is the baseline a PEFT user gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dynlora.core.inject import peft_task_type
from dynlora.errors import DynloraError
from dynlora.methods.base import MethodSpec, Prepared, TrainData
from dynlora.methods.config import check_knobs, knob
from dynlora.methods.peft_common import peft_budget, peft_flops, peft_ranks, peft_targets
from dynlora.methods.registry import register

if TYPE_CHECKING:
    from dynlora.methods.settings import AdapterSettings

# forward passes EVA may take per initialisation batch before it is called stuck: PEFT cycles through the
# batches until every kept component has converged, and has no limit of its own
PASSES_PER_BATCH = 20


@dataclass(frozen=True)
class PeftEvaConfig:
    """``rho``: how far EVA may move rank between modules (PEFT's ``EvaConfig.rho``); ``batches``: how many
    training batches its SVD reads."""

    rho: float = knob(2.0, "EVA's rank redistribution: a module may get up to r x rho ranks (1: every module "
                           "keeps r); PEFT's default 2", flag="--eva-rho", ge=1.0)
    # distinct batches converge sooner than a few cycled ones: MiniLM on rt-polarity (r 8, rho 2, batch 16) took
    # 48 passes over 64+ batches, 156 passes cycling through 16
    batches: int = knob(64, "training batches (of the run's batch size) EVA's SVD may read; it stops once the "
                            "components converge and cycles through them again if they have not",
                        flag="--eva-batches", ge=1)

    def __post_init__(self) -> None:
        check_knobs(self)
        if not isinstance(self.batches, int) or isinstance(self.batches, bool):
            raise DynloraError(f"batches {self.batches!r} must be a whole number")


def layer_rows(layer_input: Any, model_input: torch.Tensor, layer_name: str) -> torch.Tensor:
    """The rows of a layer's input that EVA's SVD reads: the unpadded tokens of (batch, seq, features), or every
    row of an input with one row per example (BERT's pooler sees (batch, features), which PEFT's default
    token indexing would misread)."""
    x = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
    if x.ndim == 3:
        return x[model_input.T.unbind()]  # model_input: (tokens, 2) indices of the attention mask's ones
    return x.reshape(-1, x.shape[-1]).contiguous()  # contiguous: PEFT hashes the input through .view()


class Bounded:
    """EVA's forward function with a limit on the passes, so a layer whose components never settle is an error
    and not a hang."""

    def __init__(self, limit: int) -> None:
        self.limit, self.passes = limit, 0

    def __call__(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
        self.passes += 1
        if self.passes > self.limit:
            raise DynloraError(f"EVA's SVD did not converge in {self.limit} forward passes; give it more "
                               "--eva-batches or a lower --eva-rho")
        return model(**inputs)


def prepare(model: nn.Module, settings: AdapterSettings, total_steps: int, seed: int,
            data: TrainData) -> Prepared:
    from peft import EvaConfig, LoraConfig, get_peft_model, initialize_lora_eva_weights

    config = settings.method_config or PeftEvaConfig()
    targets = peft_targets(model, settings)
    # plain LoRA's at r, as the other baselines: EVA hands out exactly LoRA's total rank, but counted in parameters
    # or FLOPs its ranks may cost more or less than LoRA's (MiniLM at r 8: 3% fewer parameters, fewer FFN ranks)
    budget = peft_budget(model, targets, settings)
    lora = LoraConfig(task_type=peft_task_type(model) or "SEQ_CLS", r=settings.rank, lora_alpha=settings.alpha,
                      lora_dropout=settings.dropout, target_modules=targets, init_lora_weights="eva",
                      eva_config=EvaConfig(rho=config.rho))
    # a layer with one input row per example skips every SVD step whose batch has fewer rows than the ranks it
    # may keep, and PEFT would then cycle for ever: such batches are at least that large
    size = max(data.batch_size, round(settings.rank * config.rho))
    # model inputs only: PEFT's label mask reads token labels, and a classifier's labels are one per example
    batches = [{k: v for k, v in batch.items() if k != "labels"} for batch in data.batches(config.batches, size)]
    if not batches:
        raise DynloraError(f"batch size {size}: EVA needs one batch of that many training examples, the run has "
                           f"{len(data.dataset)}")
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, lora, low_cpu_mem_usage=True)  # adapters unallocated until EVA sizes them
    # every process reads the same batches and so computes the same ranks alone: gathering would only repeat rows
    initialize_lora_eva_weights(peft_model, batches, forward_fn=Bounded(PASSES_PER_BATCH * len(batches)),
                                prepare_layer_inputs_fn=layer_rows, gather_distributed_inputs=False,
                                show_progress_bar=False)
    return Prepared(peft_model, lambda folder, gate_means=None: peft_model.save_pretrained(str(folder)),
                    ranks=lambda: peft_ranks(peft_model), flops=lambda: peft_flops(peft_model), budget=budget)


SPEC = register(MethodSpec(
    name="peft-eva",
    help="PEFT's EVA: LoRA with ranks and A from an SVD of the training data's activations (baseline)",
    prepare=prepare,
    reads_data=True,
    config=PeftEvaConfig,
    static=False,  # the ranks never move, but they differ by module: compare draws them
))
