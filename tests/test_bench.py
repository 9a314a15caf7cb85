"""`stori bench` on a tiny model: every figure (a)-(d) is printed, and every printed ratio is the quotient of
the printed raw figures (positive, finite), so a wrong formula or a swapped operand fails."""

import math
import re

import pytest

from stori_pl.cli import main
from stori_pl.cli.bench import format_rows, intcoop_rows, memory_rows, speed_rows

NUM = r"(\d+(?:\.\d+)?(?:e[+-]?\d+)?)"


def figures(out: str) -> dict[str, tuple[float | None, float | None]]:
    """``{row name: (raw value, ratio value)}`` parsed from the printed table (None where a cell is empty)."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(\(\w\) .*?|    one-off prepare .*?)\s{2,}(?:" + NUM + r" (?:s|GFLOP/s|MB))?\s*(.*)$", line)
        if m:
            ratio = re.search(NUM, m.group(3))  # the cell's first number
            rows[m.group(1).strip()] = (float(m.group(2)) if m.group(2) else None,
                                        float(ratio.group(1)) if ratio else None)
    return rows


def check_consistent(out: str, memory: bool) -> None:
    """Each ratio equals the printed raw figures divided (within the printing precision)."""
    f = figures(out)
    naive, fast = f["(a) train step, naive (all blocks, 77 tokens)"][0], f["(a) train step, fast path (prefix cache, cut after EOT)"]
    ref, ours = f["(b) encode_text"][0], f["(b) WeightedTextEncoder inference"]
    step, gemm = f["(d) fast train step, matmul FLOP/s"], f["(d) plain 2048^3 GEMM"][0]
    raws = [naive, fast[0], ref, ours[0], step[0], gemm, f["one-off prepare (blocks before k)"][0]]
    assert all(math.isfinite(v) and v > 0 for v in raws), raws
    # raw figures have 4 significant digits (relative error <= 5e-4 each), ratios 2-3 decimals
    assert fast[1] == pytest.approx(naive / fast[0], rel=2e-3, abs=0.006)
    assert ours[1] == pytest.approx(ours[0] / ref, rel=2e-3, abs=6e-4)
    assert step[1] == pytest.approx(100 * step[0] / gemm, rel=2e-3, abs=0.06)
    if memory:
        (small, adds_small), (large, _) = (v for k, v in f.items() if k.startswith("(c) chunked step"))
        ratio = f["(c) ratio large / small (peak RSS)"][1]
        assert small > 0 and large > 0 and 0 <= adds_small <= small
        assert ratio == pytest.approx(large / small, rel=1e-3, abs=6e-4)


def test_rows_are_computed_from_the_figures():
    """Known inputs → the exact ratios (fast: no model)."""
    times = {"naive": 2.0, "fast": 0.25, "prepare": 0.1, "ours": 0.3, "ref": 1.2}
    rows = speed_rows(times, (2e9, 8e9)) + memory_rows((10, 100), {"before_mb": 100.0, "peak_mb": 200.0},
                                                        {"before_mb": 100.0, "peak_mb": 300.0})
    out = format_rows(rows)
    assert "8.00x faster" in out and "0.250x the time" in out and "25.0% of GEMM" in out and "1.500x" in out
    assert "step adds 100.0 MB" in out and "step adds 200.0 MB" in out
    check_consistent(out, memory=True)


def check_intcoop(out: str) -> None:
    """(f): the ratio is the IntCoOp step over the CoOp step at the same batch."""
    f = figures(out)
    (coop, _), = (v for k, v in f.items() if k.startswith("(f) CoOp train step"))
    (intcoop, ratio), = (v for k, v in f.items() if k.startswith("(f) IntCoOp train step"))
    assert coop > 0 and intcoop > 0 and ratio == pytest.approx(intcoop / coop, rel=2e-3, abs=0.006)


def test_intcoop_rows_are_computed_from_the_figures():
    out = format_rows(intcoop_rows({"classes": 10, "batch": 4, "intcoop": 3.0, "coop": 0.5}))
    assert "(f) IntCoOp train step, 10 classes x batch 4 prompts" in out and "6.00x the CoOp step" in out
    check_intcoop(out)


@pytest.mark.slow
def test_bench_prints_consistent_figures(capsys):
    rc = main(["bench", "--model", "stori-tiny", "--start_block", "3", "--n_prompts", "12",
               "--memory_prompts", "[8, 24]", "--chunk_size", "8", "--repeats", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert re.search(r"\(a\) train step, fast path .* (\d+\.\d+)x faster", out)
    assert re.search(r"\(b\) WeightedTextEncoder inference .* (\d+\.\d+)x the time", out)
    assert re.search(r"\(c\) ratio large / small \(peak RSS\) .* (\d+\.\d+)x", out)
    assert re.search(r"\(d\) fast train step, matmul FLOP/s .* (\d+\.\d)% of GEMM", out)
    check_consistent(out, memory=True)
    check_intcoop(out)
