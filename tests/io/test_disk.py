"""A failed write, whatever raised it, becomes ``[Errno N] reason`` (or None: not a write error)."""

import errno

from safetensors import SafetensorError

from dynlora.io.disk import free_bytes, write_failure


def test_each_writer_s_full_disk_reads_as_its_errno(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.json"))
    assert write_failure(full, tmp_path) == f"[Errno 28] No space left on device: {tmp_path / 'x.json'}"
    tensors = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert write_failure(tensors, tmp_path) == "[Errno 28] No space left on device"
    # torch.save's C++ writer says no errno; with plenty of space free it is reported as it came
    torch_writer = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert free_bytes(tmp_path) > 1 << 20
    assert write_failure(torch_writer, tmp_path).startswith("the write failed: [enforce fail at inline_container")
    assert write_failure(ValueError("not a write"), tmp_path) is None
    assert write_failure(RuntimeError("shape mismatch"), tmp_path) is None
    assert free_bytes(tmp_path / "not" / "yet") == free_bytes(tmp_path)  # the nearest existing parent
