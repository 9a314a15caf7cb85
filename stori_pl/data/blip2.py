"""BLIP-2 attribute words (IntCoOp's labeller): one short answer per image to a question about its class.

The model runs through Hugging Face ``transformers`` (optional: ``pip install "stori-pl[blip2]"``) and is
downloaded on the user's machine on first use. :func:`blip2_labels` does the batching, progress bar and answer
clean-up around any ``generator(images, prompts) -> answers``, so tests inject a stand-in (no download);
:func:`load_blip2_generator` makes the real one.

The default question uses BLIP-2's zero-shot VQA prompt format ``"Question: {} Answer:"`` (Li et al., "BLIP-2",
ICML 2023, Sec. 4.2, used for its OPT models; the Hugging Face model card's example has the same form), and
asks for *one adjective* of the named object: IntCoOp's labels are single attribute words of the object
("green" for a tree frog), and naming the class keeps the answer on the object rather than the background.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stori_pl.data.image_io import open_rgb, to_rgb

BLIP2_MODEL = "Salesforce/blip2-opt-2.7b"
BLIP2_QUESTION = "Question: what is one adjective that describes the {} in the photo? Answer:"
BLIP2_HINT = 'pip install "stori-pl[blip2]"'
MAX_NEW_TOKENS = 6


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed (the message names the extra; the ``stori`` commands print it
    as one line)."""


def first_word(answer: str) -> str:
    """The first word of a generated answer, articles skipped (``"a bright green frog"`` -> ``"bright"``);
    ``""`` when there is none."""
    words = [w.strip(".,;:!?\"'()") for w in answer.split()]
    words = [w for w in words if w and w.lower() not in ("a", "an", "the")]
    return words[0] if words else ""


def blip2_labels(images: Sequence[Any], classnames: Sequence[str], generator: Callable | None = None,
                 question: str = BLIP2_QUESTION, batch_size: int = 8, progress: bool = True) -> list[str]:
    """One word per image: ``generator``'s answer to ``question`` about the image's class, cut to its first word.

    Args:
        images: Image files or PIL images.
        classnames: The class name of each image (fills ``{}`` in ``question``).
        generator: ``fn(list of PIL images, list of prompts) -> list of answers``; default the BLIP-2 of
            :func:`load_blip2_generator`.
        question: Prompt template with one ``{}``.
        batch_size: Images per generator call.
        progress: Show a progress bar.

    Returns:
        ``len(images)`` words (not yet normalized, see :func:`stori_pl.data.attribute_labels.normalize_label`).

    Raises:
        ValueError: ``question`` without ``{}``, a length mismatch, or an empty answer (naming the image).
    """
    from tqdm.auto import tqdm

    if "{}" not in question:
        raise ValueError(f"the BLIP-2 question needs a {{}} for the class name, got {question!r}")
    if len(images) != len(classnames):
        raise ValueError(f"{len(images)} images but {len(classnames)} class names")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = generator or load_blip2_generator()
    out: list[str] = []
    for start in tqdm(range(0, len(images), batch_size), desc="BLIP-2 attributes", unit="batch", disable=not progress):
        chunk = images[start:start + batch_size]
        pil = [open_rgb(im) if isinstance(im, (str, Path)) else to_rgb(im) for im in chunk]
        prompts = [question.format(c) for c in classnames[start:start + batch_size]]
        answers = list(generator(pil, prompts))
        if len(answers) != len(chunk):
            raise ValueError(f"the generator returned {len(answers)} answers for {len(chunk)} images")
        for im, prompt, answer in zip(chunk, prompts, answers):
            word = first_word(str(answer).removeprefix(prompt))
            if not word:
                raise ValueError(f"BLIP-2 gave an empty answer {answer!r} for image {im}; try another --question")
            out.append(word)
    return out


def require_transformers() -> None:
    """Raise :class:`MissingExtraError` naming the ``blip2`` extra when ``transformers`` is not installed."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise MissingExtraError(f"the blip2 labeller needs Hugging Face transformers, which is not installed: "
                                f"{BLIP2_HINT}")


def load_blip2_generator(model: str = BLIP2_MODEL, device: str | None = None) -> Callable:
    """``fn(images, prompts) -> answers`` running BLIP-2 ``model`` (fp16 on CUDA, greedy, at most
    :data:`MAX_NEW_TOKENS` new tokens); downloads the model on first use.

    Raises:
        MissingExtraError: ``transformers`` is not installed (the message names ``pip install "stori-pl[blip2]"``).
    """
    require_transformers()
    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    processor = Blip2Processor.from_pretrained(model)
    processor.tokenizer.padding_side = "left"  # batched generation with a decoder-only language model
    net = Blip2ForConditionalGeneration.from_pretrained(model, torch_dtype=dtype).to(device).eval()

    def generate(images: list, prompts: list[str]) -> list[str]:
        inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True).to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.no_grad():
            ids = net.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        return [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]

    return generate


__all__ = ["BLIP2_HINT", "BLIP2_MODEL", "BLIP2_QUESTION", "MissingExtraError", "blip2_labels", "first_word",
           "load_blip2_generator", "require_transformers"]
