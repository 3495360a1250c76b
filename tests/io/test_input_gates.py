"""Calibrating the input gate g(x) for a plain PEFT export: its mean is over real tokens, not padding."""

from __future__ import annotations

import pytest
import torch

from dynlora.core.inject import AdapterConfig, inject
from dynlora.io.input_gates import calibrate_input_gates
from tests.conftest import tiny_bert
from tests.tolerance import assert_within_rounding, chain_terms

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 5 small forwards: threads only contend


def test_padding_does_not_move_the_calibrated_gate_mean():
    model = tiny_bert()
    layers = inject(model, AdapterConfig(rank=2, input_gate=True), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a gate that depends on x (a fresh one is the same for every token)
        for layer in layers.values():
            layer.gate_w.normal_(std=1.0, generator=g)
            layer.gate_b.zero_()
    lengths = [3, 12, 2, 5]  # heavy padding: most positions of the padded batch are padding
    seqs = [torch.randint(1, 100, (n,), generator=g) for n in lengths]
    alone = [{"input_ids": s[None], "attention_mask": torch.ones(1, len(s), dtype=torch.long)} for s in seqs]
    ids = torch.zeros(len(seqs), max(lengths), dtype=torch.long)  # pad id 0
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    expected = calibrate_input_gates(model, alone)
    padded = calibrate_input_gates(model, [{"input_ids": ids, "attention_mask": mask}])
    assert padded.keys() == expected.keys() == layers.keys()
    # the same real tokens: a padded position adds an exact 0 to every softmax, but the kernels may sum the
    # longer rows in another order; each g(x) is one value through the tiny BERT (2 layers, widths 32 / 64),
    # and the mean sums the 22 real tokens
    terms = chain_terms(layers=2, hidden=32, intermediate=64, seq=max(lengths)) + sum(lengths)
    for name in expected:
        assert_within_rounding(torch.tensor(padded[name]), torch.tensor(expected[name]), terms, name=name)
