"""Run outputs appear under their final name only when complete."""

import pytest

from replay.atomic import write_atomic, write_text


def test_a_failed_write_leaves_the_old_file_and_no_debris(tmp_path):
    path = write_text(tmp_path / "summary.json", "old\n")

    def half_then_crash(tmp):
        tmp.write_text('{"calls": 12')  # half-written
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, half_then_crash)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    write_text(path, "new\n")
    assert path.read_text() == "new\n" and len(list(tmp_path.iterdir())) == 1
