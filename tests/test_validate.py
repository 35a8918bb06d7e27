"""One hand-broken file per validation rule; each problem names file, row, request and column."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from tracekit import row, write

from traces.cli import main
from traces.schema import SCHEMA, TraceMeta
from traces.validate import validate


def good_rows():
    """A valid 2-session trace with blocks of 4 tokens."""
    return [
        row("a", 0, 10, [1, 2], output_tokens=2, arrival_s=0.0),
        row("a", 1, 17, [9], parent="a-0", kept=3, arrival_s=3.0, think_s=1.0),
        row("b", 0, 9, [1, 2], arrival_s=1.0),
    ]


def problems_of(tmp_path, rows):
    return validate(write(tmp_path / "t.parquet", rows))


def test_valid_trace_has_no_problems(tmp_path):
    assert problems_of(tmp_path, good_rows()) == []
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "t.parquet")])
    assert result.exit_code == 0 and result.output.strip() == "ok: 3 requests"


def broken(change):
    rows = good_rows()
    change(rows)
    return rows


CASES = {
    "duplicate request_id": (lambda r: r[2].update(request_id="a-0"),
                             "row 2 (request_id a-0): request_id: duplicate of an earlier row"),
    "turn gap": (lambda r: r[1].update(turn=2),
                 "row 1 (request_id a-1): turn: turn 2 outside 0..1"),
    "turn twice": (lambda r: r[1].update(turn=0),
                   "turn: turn 0 appears twice in the session"),
    "unknown parent": (lambda r: r[1].update(parent_id="zz"),
                       "row 1 (request_id a-1): parent_id: parent zz not in the file"),
    "parent in other session": (lambda r: r[1].update(parent_id="b-0"),
                                "parent_id: parent b-0 belongs to session b"),
    "parent not earlier": (lambda r: r[0].update(parent_id="a-1"),
                           "row 0 (request_id a-0): parent_id: parent a-1 is not an earlier call"),
    "input_tokens < 1": (lambda r: r[2].update(input_tokens=0, new_block_hashes=[],
                                               segments=[{"kind": "user", "tokens": 0}]),
                         "row 2 (request_id b-0): input_tokens: 0 < 1"),
    "negative output": (lambda r: r[2].update(output_tokens=-1),
                        "row 2 (request_id b-0): output_tokens: -1 < 0"),
    "negative think": (lambda r: r[1].update(think_s=-0.5),
                       "row 1 (request_id a-1): think_s: -0.5 is not a duration >= 0"),
    "arrival goes back": (lambda r: r[1].update(arrival_s=-1.0),
                          "row 1 (request_id a-1): arrival_s: -1.0 is before the previous turn's 0.0"),
    "kept beyond parent": (lambda r: r[1].update(kept=4, kept_blocks=4, new_block_hashes=[]),
                           "row 1 (request_id a-1): kept_blocks: 4 exceeds the parent's 3 blocks"),
    "kept without parent": (lambda r: r[2].update(kept_blocks=1, new_block_hashes=[2]),
                            "row 2 (request_id b-0): kept_blocks: 1 but the call has no parent"),
    "block count": (lambda r: r[2].update(new_block_hashes=[1]),
                    "row 2 (request_id b-0): new_block_hashes: kept_blocks 0 + 1 new hashes != "
                    "input_tokens 9 // block_size 4"),
    "segments sum": (lambda r: r[0].update(segments=[{"kind": "system", "tokens": 7}]),
                     "row 0 (request_id a-0): segments: tokens sum to 7, not input_tokens 10"),
    "segment kind": (lambda r: r[0].update(segments=[{"kind": "sytem", "tokens": 10}]),
                     "row 0 (request_id a-0): segments: unknown segment kind"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_rule_reports_file_row_request_and_column(tmp_path, name):
    change, expected = CASES[name]
    problems = problems_of(tmp_path, broken(change))
    path = str(tmp_path / "t.parquet")
    assert any(p.startswith(f"{path}: ") and expected in p for p in problems), problems
    result = CliRunner().invoke(main, ["validate", path])
    assert result.exit_code == 1 and expected in result.output


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    rows = good_rows()
    rows[0]["think_s"] = -1.0
    rows[2]["output_tokens"] = -3
    assert len(problems_of(tmp_path, rows)) == 2


def test_missing_column_and_wrong_type(tmp_path):
    schema = pa.schema([f if f.name != "turn" else pa.field("turn", pa.string()) for f in SCHEMA
                        if f.name != "think_s"])
    rows = good_rows()
    for r in rows:
        r["turn"] = str(r["turn"])
        del r["think_s"]
    path = tmp_path / "t.parquet"
    raw = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(raw.replace_schema_metadata(TraceMeta(block_size=4).to_arrow()), path)
    problems = validate(path)
    assert f"{path}: think_s: column missing" in problems
    assert f"{path}: turn: type string, expected int32" in problems


def reasons(tmp_path, rows):
    """The problems without their file name: 'row N (request_id X): column: reason'."""
    return [p.split(": ", 1)[1] for p in problems_of(tmp_path, rows)]


def test_reasons_show_floats_nan_and_null_as_text(tmp_path):
    rows = good_rows()
    rows[0]["arrival_s"], rows[1]["arrival_s"] = 2.5e-5, 1e-5
    rows[1]["think_s"] = -1e-7
    rows[2]["cache_ttl_s"] = float("nan")
    rows[2]["kept_blocks"] = None
    assert reasons(tmp_path, rows) == [
        "row 1 (request_id a-1): think_s: -1e-7 is not a duration >= 0",
        "row 1 (request_id a-1): arrival_s: 0.00001 is before the previous turn's 0.000025",
        "row 2 (request_id b-0): kept_blocks: null < 0",
        "row 2 (request_id b-0): cache_ttl_s: NaN is not a duration > 0",
    ]


def test_nulls_of_a_column_are_one_value(tmp_path):
    # two null turns of a session are each outside 0..1 and the same turn twice; a second null
    # request_id duplicates the first
    rows = good_rows()
    rows[0]["turn"] = rows[1]["turn"] = None
    rows[0]["request_id"] = rows[2]["request_id"] = None
    rows[1]["parent_id"] = None
    rows[1]["kept_blocks"], rows[1]["new_block_hashes"] = 0, [7, 8, 9, 10]
    null_turn = ["turn: turn null outside 0..1 (the session has 2 calls)",
                 "turn: turn null appears twice in the session"]
    assert reasons(tmp_path, rows) == [
        "row 0 (request_id null): request_id: is null",
        *(f"row 0 (request_id null): {r}" for r in null_turn),
        *(f"row 1 (request_id a-1): {r}" for r in null_turn),
        "row 2 (request_id null): request_id: is null",
        "row 2 (request_id null): request_id: duplicate of an earlier row",
    ]


def test_an_import_validates_without_loading_polars_or_pyarrow_compute(tmp_path):
    # every import validates its output; polars alone would cost ~0.2 s of its start-up,
    # PyYAML (conf/limits.yaml) ~25 ms, and pandas, where installed, ~0.4 s: pyarrow's pa.array
    # and to_numpy import it on first use. This suite does not install pandas, so a stand-in
    # on the path records any attempt to import it (and fails it, as a missing pandas would).
    import os
    import subprocess
    import sys
    from pathlib import Path

    stub = tmp_path / "stub"
    stub.mkdir()
    tried = tmp_path / "pandas-was-imported"
    (stub / "pandas.py").write_text(f"open({str(tried)!r}, 'w').close()\nraise ImportError('stand-in')\n")
    sample = Path(__file__).parent / "data" / "claude_code" / "subagent.jsonl"
    code = ("import sys; from click.testing import CliRunner; from traces.cli import main; "
            f"r = CliRunner().invoke(main, ['import', 'claude-code', {str(sample)!r}, "
            f"'--out', {str(tmp_path / 't.parquet')!r}]); "
            "print(r.exit_code, *(m in sys.modules for m in "
            "('traces.validate', 'polars', 'pyarrow.compute', 'pyarrow.dataset', 'yaml')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stub), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["0", "True", "False", "False", "False", "False"]
    assert not tried.exists()
