"""Dependencies' output never reaches the terminal: held from the first import, written to the run's log."""

import logging
import warnings

from dynlora.training.run_log import hold_output, run_log


def test_what_is_logged_before_the_log_file_exists_lands_in_it_first(tmp_path, capsys):
    root = logging.getLogger()
    before = (list(root.handlers), list(logging.getLogger("kernels").handlers), warnings.showwarning)
    with hold_output():
        logging.getLogger("kernels._internals.hf_hub").warning("a notice logged while a library is imported")
        logging.getLogger("some.other.library").warning("a logger dynlora never named")
        warnings.warn("a dependency's warning at import", UserWarning, stacklevel=1)
        with run_log(tmp_path / "train.log"):
            logging.getLogger("transformers.trainer").warning("during the run")
        logging.getLogger("kernels").warning("after the run, still held")
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert [line.split(": ", 1)[1] for line in lines[:2]] == [
        "a notice logged while a library is imported", "a logger dynlora never named"]
    assert lines[2].split(": ", 1)[1].startswith(f"UserWarning: a dependency's warning at import ({__file__}:")
    assert "during the run" in lines[3] and len(lines) == 4
    assert (list(root.handlers), list(logging.getLogger("kernels").handlers), warnings.showwarning) == before


def test_held_output_without_a_log_file_is_dropped_not_printed(capsys):
    with hold_output():
        logging.getLogger("bitsandbytes").error("an error a library logs while being imported")
        warnings.warn("a warning", UserWarning, stacklevel=1)
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""
