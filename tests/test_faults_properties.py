"""Property-based tests (Hypothesis, issue 20): the readers of user input get generated malformed input and
must give a result or one clear error of a specific type (which ``stori`` prints as one line, exit 2), never
another exception. Readers: the ``(phrase:w)`` prompt parser, the CuPL file reader, the CoOp split reader and
``stori report``'s results reader. ``max_examples`` is modest so the file runs in seconds.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from stori_pl.cli import is_user_error  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON values with the shapes these files have, and everything else
json_scalars = st.none() | st.booleans() | st.integers(-5, 10**12) | st.floats(allow_nan=True) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
prompt_chars = st.sampled_from(list("ab (:)\\1.5-e9+nNiIfa,") + ["inf", "nan", " ", ")(", "((", "::"])


def write(data: bytes) -> Path:
    f = tempfile.NamedTemporaryFile(suffix=".json", delete=False)
    f.write(data)
    f.close()
    return Path(f.name)


def clear_error(err: BaseException, kind: type) -> None:
    """The error is of the reader's type, a user error `stori` prints as one line, with a one-line message."""
    assert isinstance(err, kind), repr(err)
    assert is_user_error(err), repr(err)
    assert str(err).strip() and "Traceback" not in str(err)


@SETTINGS
@given(st.lists(prompt_chars, max_size=25).map("".join))
def test_prompt_parser_gives_a_result_or_a_prompt_syntax_error(text):
    from stori_pl.text.syntax import PromptSyntaxError, parse_weighted_prompt

    try:
        plain, spans = parse_weighted_prompt(text)
    except PromptSyntaxError as err:
        clear_error(err, PromptSyntaxError)
        return
    assert isinstance(plain, str)
    for start, end, weight in spans:
        assert 0 <= start <= end <= len(plain) and weight >= 0 and weight == weight and weight != float("inf")


cupl_like = st.dictionaries(st.text(max_size=10), st.lists(st.text(max_size=10), max_size=3) | json_values,
                            max_size=4)


@SETTINGS
@given(st.one_of(cupl_like.map(lambda d: json.dumps(d).encode()), json_values.map(lambda v: json.dumps(v).encode()),
                 st.binary(max_size=40),
                 st.tuples(st.text(max_size=6), st.text(max_size=6)).map(
                     lambda kv: ('{"%s": ["x"], "%s": ["y"]}' % (kv[0], kv[0])).encode())))
def test_cupl_reader_gives_prompts_or_a_value_error(data):
    from stori_pl.data.cupl import load_cupl

    path = write(data)
    try:
        prompts = load_cupl(path)
    except ValueError as err:
        clear_error(err, ValueError)
        return
    finally:
        path.unlink()
    assert isinstance(prompts, dict) and prompts
    assert all(isinstance(k, str) and isinstance(v, list) and all(isinstance(s, str) for s in v)
               for k, v in prompts.items())


entry = st.lists(json_scalars, min_size=0, max_size=4) | st.tuples(st.text(max_size=6), st.integers(-2, 5),
                                                                   st.text(max_size=6)).map(list)
split_like = st.fixed_dictionaries({"train": st.lists(entry, max_size=4) | json_values,
                                    "test": st.lists(entry, max_size=3) | json_values},
                                   optional={"val": st.lists(entry, max_size=3) | json_values})


@SETTINGS
@given(st.one_of(split_like.map(lambda d: json.dumps(d).encode()), json_values.map(lambda v: json.dumps(v).encode()),
                 st.binary(max_size=40)))
def test_split_reader_gives_a_split_or_a_value_error(data):
    from stori_pl.data.coop import classnames_from_split, read_split

    path = write(data)
    try:
        split = read_split(path)
        names = classnames_from_split(split, str(path))
    except ValueError as err:
        clear_error(err, ValueError)
        return
    finally:
        path.unlink()
    assert all(isinstance(split[p], list) for p in ("train", "val", "test"))
    assert all(isinstance(n, str) for n in names)


result_like = st.fixed_dictionaries({}, optional={
    "method": json_values, "method_name": json_values, "dataset": json_values, "shots": json_values,
    "seed": json_values, "wall_time_s": json_values, "subsample_classes": json_values, "test_ckpt": json_values,
    "base_acc": json_values, "new_acc": json_values,
    "metrics": st.dictionaries(st.sampled_from(["test/acc", "test/loss"]), json_values, max_size=2) | json_values})


@SETTINGS
@given(st.one_of(result_like.map(lambda d: json.dumps(d).encode()), json_values.map(lambda v: json.dumps(v).encode()),
                 st.binary(max_size=40)))
def test_results_reader_gives_a_row_or_a_bad_results_file_error(data):
    from stori_pl.cli.report import BadResultsFile, read_result, summarize, to_markdown

    path = write(data)
    try:
        row = read_result(path, "test/acc")
    except BadResultsFile as err:
        clear_error(err, BadResultsFile)
        return
    finally:
        path.unlink()
    assert isinstance(row["value"], float) and isinstance(row["name"], str) and isinstance(row["shots"], int)
    from stori_pl.cli.report import Run

    table = {(row["name"], row["shots"], row["dataset"]): {row["seed"]: Run(row["value"], row["wall_s"], "?")}}
    to_markdown(*summarize(table))  # the row can be reported


@SETTINGS
@given(st.text(max_size=8), st.lists(st.text(max_size=8), max_size=3), st.lists(st.text(max_size=8), max_size=3))
def test_cupl_reader_never_drops_a_repeated_key(key, first, second):
    from stori_pl.data.cupl import load_cupl

    path = write(("{%s: %s, %s: %s}" % (json.dumps(key), json.dumps(first), json.dumps(key), json.dumps(second)))
                 .encode())
    try:
        with pytest.raises(ValueError, match="appears twice"):
            load_cupl(path)
    finally:
        path.unlink()
