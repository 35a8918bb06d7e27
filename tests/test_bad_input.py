"""Every bad input to the `traces` command is one line naming the file (row, key) and the reason,
exit code 1, no traceback and no half-written output (issue 16; the cases fuzzing found)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from tracekit import row, write

from traces.cli import main
from traces.importers import import_trace
from traces.io import TraceWriter, read_meta
from traces.schema import SCHEMA, ConfigError, TraceError, TraceMeta
from traces.synth import generate, load_config
from traces.validate import validate

DATA = Path(__file__).parent / "data"


def traces(*args: str):
    """Run the command; a traceback (any exception but SystemExit) fails the test."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def one_error_line(result) -> str:
    """The single `error:` line of a failed command."""
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


def good_trace(path: Path) -> Path:
    """Two sessions, block size 4: a-0 -> a-1 keeps 2 blocks; b-0 alone."""
    return write(path, [
        row("a", 0, 10, [11, 12], output_tokens=3),
        row("a", 1, 14, [13], parent="a-0", kept=2, arrival_s=5.0, think_s=1.0),
        row("b", 0, 9, [21, 22], arrival_s=2.0),
    ])


def rewrite(src: Path, dst: Path, change) -> Path:
    """Copy a trace with ``change(table) -> table`` applied, metadata kept."""
    table = pq.read_table(src)
    pq.write_table(change(table).replace_schema_metadata(table.schema.metadata), dst)
    return dst


def no_debris(folder: Path) -> None:
    assert not list(folder.rglob("*.partial"))


# -- reading traces -----------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["inspect", "export", "validate"])
def test_a_string_typed_column_is_one_line(tmp_path, command):
    good = good_trace(tmp_path / "good.parquet")
    bad = rewrite(good, tmp_path / "bad.parquet", lambda t: t.set_column(
        t.schema.get_field_index("arrival_s"), "arrival_s", pa.array(["0", "5", "2"])))
    args = {"inspect": ["inspect", bad], "validate": ["validate", bad],
            "export": ["export", "mooncake", bad, "--out", tmp_path / "o.jsonl", "--block-size", "4"]}
    result = traces(*args[command])
    assert result.exit_code == 1
    assert f"{bad}: arrival_s: type string, expected double" in result.output
    no_debris(tmp_path)
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("command", ["inspect", "export"])
def test_a_missing_column_is_one_line(tmp_path, command):
    good = good_trace(tmp_path / "good.parquet")
    bad = rewrite(good, tmp_path / "bad.parquet", lambda t: t.drop_columns(["new_block_hashes"]))
    args = ["inspect", bad] if command == "inspect" else [
        "export", "mooncake", bad, "--out", tmp_path / "o.jsonl", "--block-size", "4"]
    line = one_error_line(traces(*args))
    assert line.endswith(f"{bad}: new_block_hashes: column missing" + (
        "; see traces validate" if command == "export" else ""))


def test_damaged_pages_are_caught_by_their_checksums(tmp_path):
    good = good_trace(tmp_path / "good.parquet")
    data = bytearray(good.read_bytes())
    # the first data page starts right after the 4-byte magic; its header is a few dozen bytes
    for i in range(60, 100):
        data[i] ^= 0xFF
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(data))
    line = one_error_line(traces("validate", bad))
    assert line.startswith(f"error: {bad}: cannot read (")
    for args in (["inspect", bad], ["export", "mooncake", bad, "--out", tmp_path / "o.jsonl",
                                     "--block-size", "4"]):
        assert traces(*args).exit_code in (0, 1)  # a page that still decodes may read; never a traceback
    no_debris(tmp_path)


def test_source_metadata_that_is_json_but_not_an_object(tmp_path):
    good = good_trace(tmp_path / "good.parquet")
    table = pq.read_table(good)
    meta = {**table.schema.metadata, b"source": b"[1, 2]"}
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.replace_schema_metadata(meta), bad)
    for args in (["inspect", bad], ["validate", bad]):
        assert one_error_line(traces(*args)) == f"error: {bad}: source metadata is JSON list, not an object"


@pytest.mark.parametrize("copy", ["arrow_schema", "footer"])
def test_metadata_that_is_not_utf8_is_one_line(tmp_path, copy):
    # fuzz seed 20: a byte flipped in the footer's metadata (the copy pyarrow's read() restores,
    # while its schema_arrow shows the good copy inside the Arrow schema) panicked polars (a Rust
    # panic, no Exception) in validate's row checks. Every command now refuses either copy in the
    # same line.
    good = good_trace(tmp_path / "good.parquet")
    table = pq.read_table(good)
    bad = tmp_path / "bad.parquet"
    if copy == "arrow_schema":  # both copies damaged: what pyarrow writes for odd metadata
        pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"note": b"\xff\xfe"}), bad)
        name = "note"
    else:  # the footer's copy only: flip one byte of the source JSON where it stands as text
        raw, source = good.read_bytes(), table.schema.metadata[b"source"]
        assert raw.count(source) == 1
        at = raw.index(source) + 1
        bad.write_bytes(raw[:at] + b"\xa5" + raw[at + 1:])
        name = "source"
    for args in (["validate", bad], ["inspect", bad],
                 ["export", "mooncake", bad, "--out", tmp_path / "o.jsonl", "--block-size", "4"]):
        assert one_error_line(traces(*args)) == \
            f"error: {bad}: footer metadata '{name}' is not UTF-8 text (a damaged file?)"
    no_debris(tmp_path)


@pytest.mark.parametrize("column,value,at,reason", [  # the 10-minute fuzz's five tracebacks
    ("output_tokens", None, 0, "row 0 (request_id a-0): output_tokens: null < 0"),
    ("output_tokens", -1, 2, "row 2 (request_id b-0): output_tokens: -1 < 0"),
    ("kept_blocks", None, 1, "row 1 (request_id a-1): kept_blocks: null < 0"),
    ("new_block_hashes", None, 0, "row 0 (request_id a-0): new_block_hashes: is null"),
    ("request_id", None, 2, "row 2 (request_id null): request_id: is null"),
])
@pytest.mark.parametrize("command", ["inspect", "export"])
def test_values_the_schema_allows_but_the_rules_do_not_are_one_line(tmp_path, command, column, value,
                                                                    at, reason):
    good = good_trace(tmp_path / "good.parquet")
    rows = pq.read_table(good).to_pylist()
    rows[at][column] = value
    bad = rewrite(good, tmp_path / "bad.parquet", lambda t: pa.Table.from_pylist(rows, schema=t.schema))
    args = ["inspect", bad] if command == "inspect" else [
        "export", "mooncake", bad, "--out", tmp_path / "o.jsonl", "--block-size", "4"]
    line = one_error_line(traces(*args))
    refused = "not inspected" if command == "inspect" else "not exported"
    assert line.startswith(f"error: {refused}, the trace is invalid: {bad}: {reason}")
    no_debris(tmp_path)


def test_a_column_name_that_is_not_utf8_is_one_line(tmp_path):
    good = good_trace(tmp_path / "good.parquet")
    raw = good.read_bytes()

    def undecodable(i: int) -> bool:  # pyarrow itself fails to decode a name in the footer
        flipped = raw[:i] + b"\xff" + raw[i + 1:]
        try:
            pq.ParquetFile(pa.BufferReader(flipped)).schema_arrow  # noqa: B018
        except UnicodeDecodeError:
            return True
        except (pa.ArrowException, OSError):
            pass
        return False

    i = next(i for i in range(len(raw) - 9, 4, -1) if undecodable(i))  # as the fuzz's byte flips found
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(raw[:i] + b"\xff" + raw[i + 1:])
    for command in ("validate", "inspect"):
        assert one_error_line(traces(command, bad)).startswith(f"error: {bad}: not a readable Parquet file (")


@pytest.mark.parametrize("column,value,reason", [
    ("arrival_s", float("nan"), "arrival_s: NaN is not a finite number"),
    ("arrival_s", float("inf"), "arrival_s: inf is not a finite number"),
    ("think_s", None, "think_s: null is not a duration >= 0"),
    ("think_s", float("inf"), "think_s: is infinite"),
])
def test_export_refuses_nan_inf_and_null(tmp_path, column, value, reason):
    rows = [row("a", 0, 10, [11, 12]), row("a", 1, 14, [13], parent="a-0", kept=2, arrival_s=5.0)]
    rows[1][column] = value
    bad = write(tmp_path / "bad.parquet", rows)
    out = tmp_path / "o.jsonl"
    line = one_error_line(traces("export", "mooncake", bad, "--out", out, "--block-size", "4"))
    assert line.startswith("error: not exported, the trace is invalid: ")
    assert f"{bad}: row 1 (request_id a-1): {reason}" in line
    assert not out.exists()
    no_debris(tmp_path)


def test_validate_finds_zeros_written_over_hash_data(tmp_path):
    rows = [row("a", 0, 16, [0, 0, 0, 0])]  # 4 KiB of zeros would be 512 such hashes
    bad = write(tmp_path / "bad.parquet", rows)
    assert validate(bad) == [f"{bad}: row 0 (request_id a-0): new_block_hashes: a hash appears twice in "
                             "one prompt (chained hashes cannot repeat: damaged hash data)"]


def test_validate_rejects_negative_reported_counts_and_a_bad_ttl(tmp_path):
    bad = write(tmp_path / "bad.parquet", [row("a", 0, 8, [1, 2], reported_cached_tokens=-4,
                                               cache_ttl_s=0.0)])
    assert [p.split(": ", 2)[2] for p in validate(bad)] == [
        "reported_cached_tokens: -4 < 0", "cache_ttl_s: 0.0 is not a duration > 0"]


# -- importers ------------------------------------------------------------------------------------

def mooncake_line(**fields) -> str:
    return json.dumps({"timestamp": 0, "input_length": 1024, "output_length": 4, "hash_ids": [1, 2],
                       **fields})


def test_hash_ids_past_63_bits_import_and_past_64_bits_are_bad_lines(tmp_path):
    src = tmp_path / "m.jsonl"
    src.write_text("\n".join([mooncake_line(hash_ids=[2**63, 2**64 - 1]),
                              mooncake_line(timestamp=5, hash_ids=[1, 2**64])]) + "\n")
    out = tmp_path / "t.parquet"
    n, problems = import_trace("mooncake", [str(src)], out)
    assert n == 1 and validate(out) == []
    assert problems.examples == [f"{src}:2: field 'hash_ids' must be a list of integers in 0..2**64-1"]


def test_token_counts_past_the_limit_are_bad_lines_and_the_limit_can_be_raised(tmp_path):
    src = tmp_path / "m.jsonl"
    src.write_text(mooncake_line(input_length=2**31, hash_ids=[]) + "\n" + mooncake_line() + "\n")
    n, problems = import_trace("mooncake", [str(src)], tmp_path / "t.parquet")
    assert n == 1
    assert problems.examples == [f"{src}:1: field 'input_length' is 2,147,483,648, above the limit of "
                                 "10,000,000 (raise it with --max-tokens)"]
    big = tmp_path / "big.csv"
    big.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,20000000,1\n")
    assert "above the limit of 10,000,000" in one_error_line(
        traces("import", "azure", big, "--out", tmp_path / "a.parquet", "--strict"))
    result = traces("import", "azure", big, "--out", tmp_path / "a.parquet", "--max-tokens", "30000000")
    assert result.exit_code == 0 and validate(tmp_path / "a.parquet") == []  # the trace keeps its limit
    assert read_meta(tmp_path / "a.parquet").max_tokens == 30_000_000


def test_a_trace_asking_for_more_tokens_than_the_limit_is_one_line(tmp_path):
    # fuzz seed 20 (reproduced with seed 5 of fuzzkit.mutate_trace): an int32-max output count in a
    # 30-call trace had inspect hash 33M output blocks (27 s of CPU); every command now refuses
    # the row first
    good = good_trace(tmp_path / "good.parquet")
    rows = pq.read_table(good).to_pylist()
    rows[1]["output_tokens"] = 10_000_001
    bad = rewrite(good, tmp_path / "bad.parquet", lambda t: pa.Table.from_pylist(rows, schema=t.schema))
    reason = (f"{bad}: row 1 (request_id {rows[1]['request_id']}): output_tokens: 10000001 is above the "
              "limit of 10,000,000 tokens (conf/limits.yaml; traces import --max-tokens)")
    assert validate(bad) == [reason]
    assert one_error_line(traces("inspect", bad)) == \
        f"error: not inspected, the trace is invalid: {reason}; see traces validate"
    rows[1]["output_tokens"] = 10_000_000  # at the limit: fine
    assert validate(rewrite(good, tmp_path / "ok.parquet",
                            lambda t: pa.Table.from_pylist(rows, schema=t.schema))) == []


@pytest.mark.parametrize("declared", ["lots", True, 5, None])
def test_a_declared_limit_that_is_not_a_higher_integer_is_the_default(tmp_path, declared):
    # the source's max_tokens (written by an import with a raised --max-tokens) only raises the
    # bound: text, a bool, a lower number or null leave conf/limits.yaml's 10,000,000
    good = good_trace(tmp_path / "good.parquet")
    table = pq.read_table(good)
    source = {**json.loads(table.schema.metadata[b"source"]), "max_tokens": declared}
    rows = table.to_pylist()
    rows[1]["output_tokens"] = 10_000_001
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema).replace_schema_metadata(
        {**table.schema.metadata, b"source": json.dumps(source).encode()}), bad)
    assert read_meta(bad).max_tokens == 10_000_000
    assert [p.split(": ", 3)[-1] for p in validate(bad)] == [
        "10000001 is above the limit of 10,000,000 tokens (conf/limits.yaml; traces import --max-tokens)"]


def test_a_tiny_azure_csv_asking_for_two_billion_tokens_is_rejected_without_the_work(tmp_path):
    src = tmp_path / "a.csv"
    src.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,2000000000,1\n")
    tracemalloc.start()
    try:
        with pytest.raises(TraceError, match="no calls to write") as err:
            import_trace("azure", [str(src)], tmp_path / "t.parquet")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"{src}:2: field 'ContextTokens' is 2,000,000,000, above the limit" in str(err.value)
    assert peak < 20 * 2**20  # its 31M block hashes (250 MB) were never made
    no_debris(tmp_path)


def test_a_huge_azure_csv_line_is_a_bad_line(tmp_path):
    src = tmp_path / "a.csv"
    src.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                   f"0,{'9' * 200_000},1\n"  # past the csv module's 131,072-byte field limit
                   "1,100,2\n")
    n, problems = import_trace("azure", [str(src)], tmp_path / "t.parquet")
    assert n == 1 and problems.skipped == 1
    assert problems.examples[0].startswith(f"{src}:2: ")


@pytest.mark.parametrize("fmt,sample,change", [
    ("weka", "weka.jsonl", lambda o: o["requests"][0].update(model=["claude"])),
    ("codex", "codex_session_alpha.jsonl", lambda o: o["payload"].get("info", o["payload"]).update(
        model=7)),
])
def test_a_model_that_is_not_a_string_is_a_bad_line(tmp_path, fmt, sample, change):
    lines = (DATA / sample).read_text().splitlines()
    target = 0 if fmt == "weka" else 1
    obj = json.loads(lines[target])
    change(obj)
    lines[target] = json.dumps(obj)
    src = tmp_path / sample
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "t.parquet"
    n, problems = import_trace(fmt, [str(src)], out)
    assert problems.skipped == 1 and "field 'model' should be str" in problems.examples[0]
    assert problems.examples[0].startswith(f"{src}:{target + 1}: ")
    assert validate(out) == []


@pytest.mark.parametrize("fmt,sample,what", [("bailian", "bailian.jsonl", "chat_id 10 repeats"),
                                             ("weka", "weka.jsonl", "session sessA repeats")])
def test_duplicated_lines_are_dropped_and_reported_not_written_twice(tmp_path, fmt, sample, what):
    lines = (DATA / sample).read_text().splitlines()
    src = tmp_path / sample
    src.write_text("\n".join([*lines, lines[0]]) + "\n")
    out = tmp_path / "t.parquet"
    clean, _ = import_trace(fmt, [str(DATA / sample)], tmp_path / "clean.parquet")
    n, problems = import_trace(fmt, [str(src)], out)
    assert n == clean and validate(out) == []
    assert problems.examples == [f"{src}:{len(lines) + 1}: {what} {sample}:1; the first is kept"]
    with pytest.raises(TraceError, match=what):
        import_trace(fmt, [str(src)], tmp_path / "strict.parquet", strict=True)
    no_debris(tmp_path)


def test_a_folder_with_one_unreadable_file(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.jsonl").write_text((DATA / "mooncake.jsonl").read_text())
    (folder / "dir.jsonl").mkdir()  # matches *.jsonl but cannot be read
    (folder / "gone.jsonl").symlink_to(tmp_path / "missing")  # a dangling link
    result = traces("import", "mooncake", folder, "--out", tmp_path / "t.parquet")
    assert result.exit_code == 0 and "wrote 4 calls" in result.output
    assert f"{folder / 'dir.jsonl'}: cannot read (Is a directory)" in result.output
    assert f"{folder / 'gone.jsonl'}: cannot read (No such file or directory)" in result.output


# -- output paths -----------------------------------------------------------------------------------

def commands(tmp_path: Path, out: Path) -> dict[str, list]:
    good = good_trace(tmp_path / "good.parquet")
    return {"import": ["import", "mooncake", DATA / "mooncake.jsonl", "--out", out],
            "generate": ["generate", "email-drafting", "--sessions", "1", "--out", out],
            "export": ["export", "mooncake", good, "--out", out, "--block-size", "4"]}


@pytest.mark.parametrize("command", ["import", "generate", "export"])
def test_an_output_path_under_a_file(tmp_path, command):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub" / "out"
    line = one_error_line(traces(*commands(tmp_path, out)[command]))
    assert line == f"error: {out}: cannot write ({tmp_path / 'file'} is a file, not a folder)"


@pytest.mark.parametrize("command", ["import", "generate", "export"])
def test_an_output_path_that_cannot_be_written(tmp_path, command):
    out = Path("/proc/agent-replay-test/out")  # /proc takes no new files, even from root
    line = one_error_line(traces(*commands(tmp_path, out)[command]))
    assert line.startswith(f"error: {out}: cannot write (")


@pytest.mark.parametrize("command", ["import", "generate", "export"])
def test_an_output_path_that_is_a_folder_or_in_a_missing_folder(tmp_path, command):
    folder = tmp_path / "existing"
    folder.mkdir()
    result = traces(*commands(tmp_path, folder)[command])  # click's usage error, exit 2
    assert result.exit_code == 2 and f"Invalid value for '--out': File '{folder}' is a directory" in \
        result.output
    with pytest.raises(TraceError, match=f"^{folder}: is a folder; give a file name to write$"):
        TraceWriter(folder, TraceMeta(block_size=4)).__enter__()
    out = tmp_path / "new" / "deeper" / "out"  # missing folders are made
    assert traces(*commands(tmp_path, out)[command]).exit_code == 0 and out.is_file()
    no_debris(tmp_path)


def test_writer_removes_its_partial_when_the_final_flush_fails(tmp_path):
    out = tmp_path / "t.parquet"
    with pytest.raises((pa.ArrowException, TypeError, ValueError)):
        with TraceWriter(out, TraceMeta(block_size=4)) as writer:
            fields = {n: None for n in SCHEMA.names if n not in ("new_block_hashes", "segments")}
            writer.add(np.zeros(0, np.uint64), [("user", 3)], **{**fields, "input_tokens": "three"})
    assert list(tmp_path.iterdir()) == []


# -- generator knobs --------------------------------------------------------------------------------

@pytest.mark.parametrize("generator,override,message", [
    ("coding_agent", "sessions=0", "trace knob sessions must be an integer >= 1, got 0"),
    ("coding_agent", "subagent.probability=2",
     "trace knob subagent.probability must be a probability in [0, 1], got 2"),
    ("coding_agent", "system_tokens=-100", "trace knob system_tokens must be a finite number >= 0, got -100"),
    ("coding_agent", "arrival.rate_per_s=0",
     "trace knob arrival.rate_per_s must be a finite number > 0, got 0"),
    ("coding_agent", "human_prompts=[3,1]",
     "trace knob human_prompts must be a range [lo, hi] with 1 <= lo <= hi, got [3, 1]"),
    ("coding_agent", "compaction.threshold_tokens=300000", "trace knob compaction.threshold_tokens must be "
     "below compaction.window_tokens (200000), got 300000"),
    ("email_drafting", "burst_sessions=[0,2]",
     "trace knob burst_sessions must be a range [lo, hi] with 1 <= lo <= hi, got [0, 2]"),
    ("email_drafting", "revision_round_probs=[0.5,0.6]",
     "trace knob revision_round_probs must be probabilities in [0, 1] that sum to 1, got [0.5, 0.6]"),
])
def test_a_generator_knob_out_of_range_is_one_line_naming_it(tmp_path, generator, override, message):
    out = tmp_path / "t.parquet"
    with pytest.raises(ConfigError) as err:
        generate(load_config(generator, [override]), out)
    assert str(err.value) == message
    name = generator.replace("_", "-")
    assert one_error_line(traces("generate", name, override, "--out", out)) == f"error: {message}"
    assert list(tmp_path.iterdir()) == []


def test_traces_help_loads_no_pyarrow_or_polars():
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from traces.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); "
            "print(r.exit_code, *(m in sys.modules for m in ('pyarrow', 'polars', 'numpy', 'tqdm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False", "False", "False", "False"]


def test_limits_file_is_read_as_pyyaml_reads_it_and_a_bad_line_is_named():
    # read line by line (PyYAML's import is ~25 ms of every import command): the shipped file
    # must mean the same to both readers, and a line the reader cannot take is one clear error
    import yaml

    from conf import conf_file
    from traces.schema import read_limits

    text = conf_file("limits.yaml").read_text()
    assert read_limits(text) == yaml.safe_load(text) == {"max_tokens": 10_000_000}
    with pytest.raises(ConfigError, match=r"conf/limits.yaml line 2: expected 'name: integer', "
                                          r"got 'max_tokens: 1e7'"):
        read_limits("# bounds\nmax_tokens: 1e7  # too clever\n")
