"""Ideal reuse worked out by hand, and block expansion from the delta form."""

import numpy as np
import pytest
from click.testing import CliRunner
from tracekit import row, write

from traces.cli import main
from traces.expand import expand
from traces.hashing import output_block_hashes
from traces.stats import inspect


@pytest.fixture
def three_calls(tmp_path):
    """Blocks of 4 tokens.

    a-0: 10 tokens, blocks [1, 2], output 2 -> its sequence has (10+2)//4 = 3 blocks. Nothing seen
         before: reused 0.
    a-1: 16 tokens, keeps a-0's 3 blocks, one new [3]. Reusable (16-1)//4 = 3 blocks: reused 12.
    b-0: 13 tokens, blocks [1, 7, 2]: 1 was seen, 7 not, so 2 does not count (prefix semantics):
         reused 4.
    Ideal reuse = (0 + 12 + 4) / (10 + 16 + 13) = 16 / 39.
    """
    return write(tmp_path / "t.parquet", [
        row("a", 0, 10, [1, 2], output_tokens=2, arrival_s=0.0),
        row("a", 1, 16, [3], parent="a-0", kept=3, arrival_s=4.0, think_s=2.0),
        row("b", 0, 13, [1, 7, 2], arrival_s=1.0, workload="other"),
    ])


def test_ideal_reuse_by_hand(three_calls):
    figures = inspect(three_calls)
    assert figures["ideal_reuse"] == pytest.approx(16 / 39)
    assert figures["ideal_reuse_by_workload"] == {"test": pytest.approx(12 / 26),
                                                  "other": pytest.approx(4 / 13)}
    assert figures["requests"] == 3 and figures["sessions"] == 2
    assert figures["context_growth_tokens"]["p50"] == 6
    result = CliRunner().invoke(main, ["inspect", str(three_calls)])
    assert result.exit_code == 0 and "0.4103" in result.output


def test_arrival_order_decides_what_was_seen(tmp_path):
    # b-0 now arrives first, so it sees nothing; a-0 then finds blocks 1 and 2 from b-0: both
    # lead its prompt, and (10-1)//4 = 2 are reusable, so 8 of 23 tokens.
    path = write(tmp_path / "t.parquet", [
        row("a", 0, 10, [1, 2], arrival_s=5.0),
        row("b", 0, 13, [1, 7, 2], arrival_s=1.0),
    ])
    assert inspect(path)["ideal_reuse"] == pytest.approx(8 / 23)


def test_expand_rebuilds_full_lists_with_output_blocks(three_calls):
    full = dict(expand(three_calls))
    out_block = output_block_hashes(2, "a-0", 10, 2, 4)
    assert full["a-0"].tolist() == [1, 2]
    assert full["a-1"].tolist() == [1, 2, int(out_block[0]), 3]
    assert full["b-0"].tolist() == [1, 7, 2]
    assert all(v.dtype == np.uint64 for v in full.values())


def test_aiperf_hit_rate_beside_ideal_reuse_by_hand(three_calls):
    # AIPerf's rule, in arrival order (a-0, b-0, a-1), each prompt's blocks up to the first one no
    # earlier prompt carried, over all its blocks; then the plain mean over requests:
    #   a-0 [1, 2]: nothing seen -> 0/2
    #   b-0 [1, 7, 2]: 1 seen, 7 not -> 1/3
    #   a-1 [1, 2, o, 3]: o is a block a-0's output completed, in no earlier prompt -> 2/4
    # mean (0 + 1/3 + 1/2) / 3 = 5/18, where the token-weighted ideal reuse (which counts o, kept
    # from the parent's sequence, and caps at the last token) is 16/39.
    figures = inspect(three_calls)
    assert figures["aiperf_hit_rate_unweighted"] == pytest.approx(5 / 18)
    assert figures["ideal_reuse"] == pytest.approx(16 / 39)
    result = CliRunner().invoke(main, ["inspect", str(three_calls)])
    assert "aiperf_hit_rate_unweighted 0.2778" in " ".join(result.output.split())


def test_aiperf_hit_rate_child_at_its_parents_instant(tmp_path):
    # a-1 is first in the file but sent at a-0's instant: it is taken after a-0. a-0 [1, 2]: 0/2;
    # a-1 keeps 2 blocks and adds [3]: 2/3; mean 1/3. A parent missing from the file is one line.
    path = write(tmp_path / "t.parquet", [row("a", 1, 12, [3], parent="a-0", kept=2, arrival_s=0.0),
                                          row("a", 0, 10, [1, 2], arrival_s=0.0)])
    assert inspect(path)["aiperf_hit_rate_unweighted"] == pytest.approx(1 / 3)
    orphan = write(tmp_path / "o.parquet", [row("a", 1, 12, [3], parent="zz", kept=2)])
    result = CliRunner().invoke(main, ["inspect", str(orphan)])
    assert result.exit_code == 1 and "row 0 (request_id a-1)" in result.output
    assert "(and 1 more)" in result.output  # turn 1 alone in its session, parent zz not in the file
