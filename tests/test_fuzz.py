"""A bounded run of the trace fuzzer (tests/fuzzkit.py): mutated valid inputs of every importer
and damaged trace files, fed to `traces import/validate/inspect/export`. Every run must exit 0
or 1 without a traceback, leave no .partial file, and every written trace must pass validate.
`python -m benchmarks.fuzz_traces --seconds 600` runs the same for ten minutes."""

from fuzzkit import fuzz


def test_mutated_inputs_give_no_traceback_no_debris_no_invalid_trace(tmp_path):
    tally = fuzz(runs=200, seed=20261126, workdir=tmp_path)
    assert tally.runs == 200
    assert tally.summary() == {"runs": 200, "tracebacks": 0, "distinct_tracebacks": 0, "debris": 0,
                               "invalid_outputs": 0, "bad_exit": 0, "slow": 0}, tally.examples
