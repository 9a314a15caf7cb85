"""`stori bench` runs end to end on a tiny model and prints every figure (a)-(d)."""

import re

import pytest

from stori_pl.cli import main


@pytest.mark.slow
def test_bench_prints_all_figures(capsys):
    rc = main(["bench", "--model", "stori-tiny", "--start-block", "3", "--n-prompts", "12",
               "--memory-prompts", "[8, 24]", "--chunk-size", "8", "--repeats", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert re.search(r"\(a\) train step, fast path .* (\d+\.\d)x faster", out)
    assert re.search(r"\(b\) WeightedTextEncoder inference .* (\d+\.\d+)x the time", out)
    assert re.search(r"\(c\) ratio large / small \(peak RSS\) .* (\d+\.\d+)x", out)
    assert re.search(r"\(d\) fast train step, matmul FLOP/s .* (\d+)% of GEMM", out)
