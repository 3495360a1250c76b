"""``OwnLearningRates``: a parameter at its own base lr inside someone else's param groups steps exactly as
it would in its own group, under the group's scheduler; and L1RA under a one-group optimizer decides as
under its own gate groups (the Trainer's and TRL's optimizers have no gate group)."""

import pytest
import torch
from torch import nn

from dynlora.control.controller import Controller
from dynlora.core.inject import AdapterConfig, inject
from dynlora.core.own_lr import OwnLearningRates
from dynlora.methods.l1ra import L1RA, L1RAConfig, gate_param_groups
from tests.conftest import tiny_bert, train_steps
from tests.tolerance import assert_within_rounding, chain_terms

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trajectory(split: bool, optimizer_cls, steps: int = 12) -> list[torch.Tensor]:
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(3))
    if split:
        opt = optimizer_cls([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 5e-2}])
    else:
        opt = optimizer_cls([{"params": [a, b], "lr": 1e-3}])
        OwnLearningRates(opt, {b: 5e-2})
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4) * (1 - s / 20))
    out = []
    for step in range(steps):
        loss = (a.sin().sum() + (b * torch.arange(3.0)).cos().sum()) * (1 + step % 3)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        out.append(torch.cat([a.detach(), b.detach()]).clone())
    return out


@pytest.mark.parametrize("optimizer_cls", [torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD],
                         ids=["adamw", "adam", "sgd"])
def test_rescaled_step_equals_an_own_group_under_a_scheduler(optimizer_cls):
    for step, (own, rescaled) in enumerate(zip(_trajectory(True, optimizer_cls), _trajectory(False, optimizer_cls))):
        # the rescaled step is read back as p_after - p_before, which carries one rounding of |p|, and multiplied
        # by the factor (5e-2 / 1e-3 = 50): 50 roundings of |p|, and a few more, at every step
        assert_within_rounding(rescaled, own, terms=50 + 3, steps=step + 1, name=f"step {step}")


def test_no_rescale_when_the_group_already_has_the_lr_and_close_removes_hooks():
    p = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.1}])
    own = OwnLearningRates(opt, {p: 0.1})
    assert own.factors() == {}
    own.close()
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def _l1ra_run(split: bool) -> tuple[list, Controller]:
    cfg = L1RAConfig(lam=1.5, lr_c=0.05, interval=6)
    model = tiny_bert()
    inject(model, AdapterConfig(rank=4, alpha=8, use_gate=True), generator=torch.Generator().manual_seed(0))
    groups = (gate_param_groups(model, 1e-2, cfg) if split
              else [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-2, "weight_decay": 0.0}])
    opt = torch.optim.AdamW(groups)
    controller = Controller(model, L1RA(cfg, total_steps=14), optimizer=opt)

    def batch(step):
        g = torch.Generator().manual_seed(1000 + step)
        return torch.randint(1, 100, (8, 10), generator=g), torch.randint(0, 2, (8,), generator=g)

    losses = train_steps(model, opt, controller, 14, batch)
    return losses, controller


def test_l1ra_under_a_one_group_optimizer_moves_ranks_as_under_its_own_gate_group():
    own_losses, own = _l1ra_run(split=True)
    one_losses, one = _l1ra_run(split=False)
    moved = [e for e in own.history if e.event == "realloc" and e.detail["moved"]]
    assert moved, "the reference run moved no rank"
    assert [e.ranks for e in one.history if e.event == "realloc"] == [e.ranks for e in own.history
                                                                       if e.event == "realloc"]
    # the gates' rescaled steps carry 5 (lr_c / lr) roundings of |gate| and a few more, which every later forward
    # carries: tiny BERT, 2 layers, hidden 32, feed-forward 64, batches of 8 x 10 tokens, 14 steps
    terms = chain_terms(layers=2, hidden=32, intermediate=64, seq=10, batch_tokens=8 * 10) + 5 + 3
    assert_within_rounding(torch.tensor(one_losses), torch.tensor(own_losses), terms, steps=14, name="loss")
