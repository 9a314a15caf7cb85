"""`stori describe`: a CuPL-format file from a local causal LM — the plumbing, with a tiny random-init GPT-2 and a
word-level tokenizer that the test builds (no download)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from stori_pl.cli import main
from stori_pl.data.cupl import load_cupl, match_cupl
from stori_pl.data.describe import (CUPL_SAMPLING, QUESTIONS, clean_sentence, describe_classes, keep_sentences,
                                    questions_for)

WORDS = ("a an the red blue green circle square triangle shape looks like is round with four three sides corners "
         "bright small large it has of and on plain background").split()


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A 1-layer GPT-2 (random weights) and a word-level tokenizer over a few words plus ``.``, saved as a
    Hugging Face model folder."""
    pytest.importorskip("transformers")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<eos>", "<unk>", ".", "?", ":", *WORDS, "describe", "what", "does",
                                         "look", "how", "can", "you", "identify", "image", "from", "internet",
                                         "caption", "an", "photo"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # make "." likely, so completions end like CuPL's
        model.lm_head.weight[vocab["."]] += 0.5 * model.transformer.wte.weight.mean(0)
    folder = tmp_path_factory.mktemp("tiny_lm")
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_cupl_settings_and_questions():
    """CuPL's generate_image_prompts.py: temperature .99, max_tokens 50, n=10, stop '.', five ImageNet questions."""
    assert CUPL_SAMPLING == {"temperature": 0.99, "max_tokens": 50, "n": 10, "stop": "."}
    assert questions_for("apple") == [
        "Describe what an apple looks like", "How can you identify an apple?", "What does an apple look like?",
        "Describe an image from the internet of an apple", "A caption of an image of an apple:"]
    assert len(QUESTIONS["texture"]) == 6 and questions_for("banded", "texture")[0] == \
        "What does a banded material look like?"
    assert clean_sentence(" A red\n\ncircle is round. Then more") == "A redcircle is round."
    assert clean_sentence(" . ") == "" and clean_sentence("") == ""
    assert keep_sentences(["A b.", "a B.", "", "x " * 70 + ".", "C d."], max_words=60) == ["A b.", "C d."]


def test_describe_writes_a_valid_cupl_file_and_resumes(tiny_lm, tmp_path, capsys):
    out = tmp_path / "prompts.json"
    argv = ["describe", "--model", str(tiny_lm), "--classes", "red circle,blue square", "--output", str(out),
            "--n", "4", "--max_tokens", "12", "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    data = load_cupl(out)  # what FewShotImageFolder(prompts=...) reads
    assert list(data) == ["red circle", "blue square"]
    assert match_cupl(data, ["red circle", "blue square"])  # every class matched, no blank sentence
    for sentences in data.values():
        assert 1 <= len(sentences) <= 5 * 4  # 5 questions x n=4, minus dropped ones
        assert len({s.lower() for s in sentences}) == len(sentences)  # deduplicated
        assert all(s.endswith(".") and s.strip(". ") and len(s.split()) <= 60 for s in sentences)
        assert all(s.count(".") == 1 for s in sentences)  # cut at the first stop
    # resumable: kept classes are not asked again, new ones are added, the file stays valid
    data["red circle"] = ["A kept sentence."]
    out.write_text(json.dumps(data))
    argv[4] = "red circle,blue square,green triangle"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    again = load_cupl(out)
    assert again["red circle"] == ["A kept sentence."] and again["blue square"] == data["blue square"]
    assert again["green triangle"]
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temporary file


def test_describe_classes_from_a_folder_root(tmp_path):
    for folder in ("red_circle", "Blue_Square"):
        (tmp_path / "d" / folder).mkdir(parents=True)
    asked = []

    def complete(question):
        asked.append(question)
        return [f" Answer {len(asked)}. more", "", " x" * 80, f"answer {len(asked)}."]  # cut, empty, long, duplicate

    from stori_pl.cli.describe import _names

    names = _names(None, str(tmp_path / "d"), None)
    assert names == ["Blue Square", "red circle"]
    result = describe_classes(names, tmp_path / "p.json", complete, kind="scene")
    assert len(asked) == 6 and asked[3] == "Describe what a red circle looks like"
    assert result == {"Blue Square": ["Answer 1.", "Answer 2.", "Answer 3."],
                      "red circle": ["Answer 4.", "Answer 5.", "Answer 6."]}
    assert json.loads((tmp_path / "p.json").read_text()) == result


def test_describe_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["describe", "--model", "m", "--output", str(tmp_path / "o.json")]) == 2
    assert "exactly one of --classes" in capsys.readouterr().err
    assert main(["describe", "--model", "m", "--classes", "a", "--kind", "cars", "--output", "o.json"]) == 2
    assert "unknown kind 'cars'" in capsys.readouterr().err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    assert main(["describe", "--model", "m", "--classes", "a", "--output", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stori describe: error:")
    assert 'pip install "stori-pl[describe]"' in err[0]
