"""Class descriptions in CuPL's format ``{class name: [sentence, ...]}``, written by a local causal language model.

CuPL (Pratt et al. 2023) asks GPT-3 a few questions per class and keeps every completion. This module does the same
with any Hugging Face causal LM on your machine (``pip install "stori-pl[describe]"``):

- the questions: CuPL's ImageNet questions, verbatim (``generate_image_prompts.py`` of github.com/sarahpratt/CuPL,
  lines 23-27), for ``kind="generic"``; for textures, food, flowers, scenes and objects, questions read off CuPL's
  released files (each class has 10 completions per question, in question order: DTD's 60 are 6 groups about the
  "material", "surface", "texture", "object", "thing", "pattern"; SUN397's, Food-101's and Caltech101's 30 are 3
  groups, Flowers102's 20 are 2), so their wording is a close reading, not CuPL's code;
- the sampling: ``temperature=0.99``, ``max_tokens=50``, ``n=10`` completions per question, ``stop="."`` (CuPL's
  ``openai.Completion.create`` call); here pure temperature sampling (``top_k=0``, ``top_p=1``), cut at the first
  ``.``; as in CuPL, ``"\\n\\n"`` is removed and a ``.`` appended;
- then: whitespace normalized, empty sentences and those over ``max_words`` words (they would not fit CLIP's
  77-token context) dropped, duplicates (case-insensitive) dropped;
- resumable: classes already in the output file are kept; the file is rewritten atomically after every class.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from stori_pl.utils import write_json

DESCRIBE_HINT = 'pip install "stori-pl[describe]"'

# CuPL, generate_image_prompts.py lines 23-27 ({a}: "a" or "an", {c}: the class name)
GENERIC = ("Describe what {a} {c} looks like", "How can you identify {a} {c}?", "What does {a} {c} look like?",
           "Describe an image from the internet of {a} {c}", "A caption of an image of {a} {c}:")
QUESTIONS: dict[str, tuple[str, ...]] = {
    "generic": GENERIC,
    "object": ("Describe what {a} {c} looks like", "Describe a photo of {a} {c}", "What does {a} {c} look like?"),
    "texture": ("What does {a} {c} material look like?", "What does {a} {c} surface look like?",
                "What does {a} {c} texture look like?", "What does {a} {c} object look like?",
                "What does {a} {c} thing look like?", "What does {a} {c} pattern look like?"),
    "food": ("Describe what {c} looks like", "Visually describe {c}",
             "How can you tell that the food in this photo is {c}?"),
    "flower": ("What does {a} {c} flower look like?", "How can you identify {a} {c}, a type of flower?"),
    "scene": ("Describe what {a} {c} looks like", "How can you identify {a} {c}?", "Describe a photo of {a} {c}"),
}
CUPL_SAMPLING = {"temperature": 0.99, "max_tokens": 50, "n": 10, "stop": "."}
"""CuPL's ``openai.Completion.create`` settings (generate_image_prompts.py lines 31-38)."""


class MissingTransformersError(ImportError, ValueError):
    """``transformers`` is not installed (the message names the ``describe`` extra; printed as one line)."""


def require_transformers() -> None:
    """Raise :class:`MissingTransformersError` naming the extra when ``transformers`` is not installed."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise MissingTransformersError(f"stori describe runs a Hugging Face causal language model with the package "
                                       f"transformers, which is not installed: {DESCRIBE_HINT}")


def article(name: str) -> str:
    """CuPL's article: ``an`` before a vowel, else ``a`` (CuPL checks the first letter against ``AEIOU``, case-
    sensitively; here both cases)."""
    return "an" if name[:1].upper() in "AEIOU" and name[:1] else "a"


def questions_for(name: str, kind: str = "generic", questions: Sequence[str] | None = None) -> list[str]:
    """The questions asked about class ``name``.

    Args:
        name: Class name.
        kind: Key of :data:`QUESTIONS` (the kind of data).
        questions: Own templates instead (``{c}``: the class name, ``{a}``: its article).
    """
    if questions is None:
        if kind not in QUESTIONS:
            raise ValueError(f"unknown kind {kind!r}; one of {', '.join(QUESTIONS)} (or give --questions FILE)")
        questions = QUESTIONS[kind]
    return [q.format(a=article(name), c=name) for q in questions]


def clean_sentence(text: str, stop: str = ".") -> str:
    """One completion as a CuPL sentence: cut at ``stop``, ``"\\n\\n"`` removed (as CuPL), whitespace collapsed,
    ``stop`` appended; ``""`` when nothing is left."""
    if stop:
        text = text.split(stop, 1)[0]
    text = " ".join(text.replace("\n\n", "").split())
    return f"{text}{stop}" if text.strip(" .,;:!?-") else ""


def keep_sentences(sentences: Sequence[str], max_words: int = 60) -> list[str]:
    """Drop empty, over-long (``> max_words`` words) and duplicate (case-insensitive) sentences; order kept."""
    seen, out = set(), []
    for s in sentences:
        key = s.lower()
        if s and len(s.split()) <= max_words and key not in seen:
            seen.add(key)
            out.append(s)
    return out


class Describer:
    """A local causal LM answering CuPL's questions.

    Args:
        model: Hugging Face model name or local folder (``AutoModelForCausalLM``).
        device: Torch device (default: cuda when available).
        chat: Wrap each question in the tokenizer's chat template (``None``: when it has one; instruction-tuned
            models answer better that way; CuPL completed plain text with GPT-3).
        seed: Sampling seed (each question samples from its own stream, derived from the seed and the question,
            so a resumed run draws what an uninterrupted one would).
    """

    def __init__(self, model: str, device: str | None = None, chat: bool | None = None, seed: int = 0):
        require_transformers()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForCausalLM.from_pretrained(model, **_auto_dtype()).to(self.device).eval()
        except OSError as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise FileNotFoundError(f"could not load the language model {model!r} ({first}); give a local folder "
                                    "or a Hugging Face model name (downloaded on first use)") from None
        template = getattr(self.tokenizer, "chat_template", None)
        self.chat = bool(template) if chat is None else chat
        if self.chat and not template:
            raise ValueError(f"chat: true, but the tokenizer of {model!r} has no chat template")
        self.seed = seed

    def prompt_ids(self, question: str):
        """Token ids ``[1, T]`` of one question (plain text, or in the chat template)."""
        if self.chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                      add_generation_prompt=True, return_tensors="pt")
        return self.tokenizer(question, return_tensors="pt").input_ids

    def complete(self, question: str, n: int = 10, temperature: float = 0.99, max_tokens: int = 50) -> list[str]:
        """``n`` sampled completions of ``question`` (the new text only)."""
        import torch

        ids = self.prompt_ids(question).to(self.device)  # [1, T]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        torch.manual_seed(self.seed * 1_000_003 + zlib.crc32(question.encode("utf-8")))  # reproducible per question
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                      temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_tokens,
                                      num_return_sequences=n, pad_token_id=pad)  # [n, T + new]
        return self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def _auto_dtype() -> dict:
    """``from_pretrained`` keyword loading the checkpoint's own dtype (bf16 LLMs stay bf16): ``dtype`` from
    transformers 4.56 on, ``torch_dtype`` before."""
    import transformers

    major, minor = (int(p) for p in re.findall(r"\d+", transformers.__version__)[:2])
    return {"dtype": "auto"} if (major, minor) >= (4, 56) else {"torch_dtype": "auto"}


def describe_classes(
    names: Sequence[str],
    output: str | Path,
    complete: Callable[[str], list[str]],
    kind: str = "generic",
    questions: Sequence[str] | None = None,
    max_words: int = 60,
    stop: str = ".",
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, list[str]]:
    """Write (or complete) a CuPL-format file for ``names``.

    Args:
        names: Class names (the keys written).
        output: The JSON file; classes it already holds (with at least one sentence) are kept, not asked again.
        complete: question -> completions (e.g. :meth:`Describer.complete` with CuPL's settings).
        kind: Kind of data (:data:`QUESTIONS`).
        questions: Own question templates (``{c}``, ``{a}``) instead of the kind's.
        max_words: Longest sentence kept, in words.
        stop: Completions are cut at the first ``stop`` (CuPL: ``"."``).
        progress: Called with ``(class name, sentences kept)`` after each class.

    Returns:
        The whole file's content ``{class: [sentences]}``.

    Raises:
        ValueError: the output file exists but is not a CuPL-format JSON object.
    """
    output = Path(output)
    done: dict[str, list[str]] = {}
    if output.is_file():
        try:
            done = json.loads(output.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{output} exists but is not valid JSON ({e}); move it away or pick another --output")
        if not isinstance(done, dict) or not all(isinstance(v, list) for v in done.values()):
            raise ValueError(f"{output} exists but is not a CuPL file {{class: [sentences]}}")
    for name in names:
        if done.get(name):
            continue
        raw = [clean_sentence(text, stop) for q in questions_for(name, kind, questions) for text in complete(q)]
        kept = keep_sentences(raw, max_words)
        if kept:
            done[name] = kept
            write_json(output, done)  # atomic: an interrupted run keeps every finished class
        if progress is not None:
            progress(name, len(kept))
    return done


def read_class_names(classes: Sequence[str] | str) -> list[str]:
    """Class names from a list, a comma-separated string, or a text file (one per line; ``#`` comments)."""
    if isinstance(classes, str):
        path = Path(classes).expanduser()
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            classes = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        else:
            classes = classes.split(",")
    names = [re.sub(r"\s+", " ", c).strip() for c in classes]
    names = [n for n in names if n]
    if not names:
        raise ValueError("no class names given (--classes 'a,b' or a file with one name a line, or --root DIR)")
    return list(dict.fromkeys(names))
