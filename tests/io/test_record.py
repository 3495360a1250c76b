"""A process's run record: JSON values and tensors, nested, come back as they were written."""

import torch

from dynlora.io.record import RECORD_FILE, TENSORS_FILE, read_record, write_record


def test_record_round_trip_keeps_tensors_bit_for_bit(tmp_path):
    scores = {"layer.0.lora_A": torch.randn(2, 3), "layer.0.lora_E": torch.randn(2, 1, dtype=torch.float64)}
    record = {"loss_sum": 1.25, "callbacks": {"Hooks": {"0": {"ipt": scores, "rank_pattern": {"a": [True, False]},
                                                             "calls": 7}}, "Memory": {"per_step": [1, 2]}}}
    write_record(tmp_path, 1, record)
    assert (tmp_path / TENSORS_FILE.format(process=1)).is_file()
    back = read_record(tmp_path, 1)
    ipt = back["callbacks"]["Hooks"]["0"].pop("ipt")
    assert ipt.keys() == scores.keys() and all(torch.equal(ipt[k], scores[k]) for k in scores)
    assert ipt["layer.0.lora_E"].dtype == torch.float64
    record["callbacks"]["Hooks"]["0"].pop("ipt")
    assert back == record
    assert read_record(tmp_path, 0) is None  # another process's record was never written
    write_record(tmp_path, 2, {"loss_sum": 0.5})  # no tensors: no tensor file
    assert not (tmp_path / TENSORS_FILE.format(process=2)).exists() and (tmp_path / RECORD_FILE.format(process=2))
