"""Write class descriptions (a CuPL-format prompts file) with a local Hugging Face causal language model.

The classes come from ``--classes`` (``"a,b,c"`` or a file with one name a line) or from a ``FewShotImageFolder``
root (``--root DIR``: its class folders, ``_`` -> space, renamed by ``--classnames``). Each class is asked CuPL's
questions for the kind of data (``--kind``; or ``--questions FILE`` with ``{c}`` for the class and ``{a}`` for its
article), ``--n`` completions each with CuPL's sampling (temperature 0.99, 50 new tokens, cut at the first ``.``);
empty, over-long and duplicate sentences are dropped. The file is rewritten atomically after every class, and a
rerun keeps the classes it already holds (resume an interrupted run, or add classes). Needs
``pip install "stori-pl[describe]"`` (transformers).

Examples::

    stori describe --root my_photos --kind generic --model Qwen/Qwen2.5-1.5B-Instruct --output prompts.json
    stori describe --classes "red fox,arctic fox" --model ./my-local-llm --output foxes.json
    stori fit --data FewShotImageFolder --data.root my_photos --data.prompts prompts.json --model StoriClassifier ...
"""

from __future__ import annotations

import sys
from pathlib import Path

from stori_pl.data.describe import (
    Describer,
    describe_classes,
    questions_for,
    read_class_names,
    require_transformers,
)
from stori_pl.data.few_shot_folder import FewShotImageFolder


def describe(model: str, output: Path, classes: str | None = None, root: str | None = None,
             classnames: str | None = None, kind: str = "generic", questions: str | None = None, n: int = 10,
             temperature: float = 0.99, max_tokens: int = 50, max_words: int = 60, chat: bool | None = None,
             device: str | None = None, seed: int = 0) -> int:
    """Write (or complete) a CuPL-format prompts file ``{class: [sentences]}``.

    Args:
        model: Hugging Face causal LM: a local folder or a model name (downloaded on first use).
        output: The JSON file to write; classes it already holds are kept.
        classes: Class names, comma-separated, or a text file with one name a line.
        root: Or a FewShotImageFolder root: its class folders (DIR/<class>/ or DIR/train/<class>/).
        classnames: With root: JSON file mapping folder names to class names.
        kind: Kind of data, chooses CuPL's questions: generic, object, texture, food, flower, scene.
        questions: Text file of own question templates, one a line ({c}: class name, {a}: a/an).
        n: Completions per question (CuPL: 10).
        temperature: Sampling temperature (CuPL: 0.99).
        max_tokens: New tokens per completion (CuPL: 50).
        max_words: Longest sentence kept, in words (longer ones would not fit CLIP's 77-token context).
        chat: Use the tokenizer's chat template (default: when it has one).
        device: Torch device (default: cuda when available, else cpu).
        seed: Sampling seed.

    Returns:
        Exit status 0 (2 when some class got no usable sentence: rerun to retry them).
    """
    names = _names(classes, root, classnames)
    own = _questions(questions)
    if n < 1 or max_tokens < 1 or max_words < 1 or not temperature > 0:
        raise ValueError("n, max_tokens and max_words must be >= 1 and temperature > 0")
    if own is None:
        questions_for("x", kind)  # an unknown kind fails before the model loads
    require_transformers()
    lm = Describer(model, device=device, chat=chat, seed=seed)
    print(f"stori describe: {len(names)} classes, {model} ({'chat' if lm.chat else 'plain text'}), -> {output}")

    def complete(question: str) -> list[str]:
        return lm.complete(question, n=n, temperature=temperature, max_tokens=max_tokens)

    def progress(name: str, kept: int) -> None:
        print(f"  {name}: {kept} sentences")

    result = describe_classes(names, output, complete, kind, own, max_words, progress=progress)
    missing = [c for c in names if not result.get(c)]
    if missing:
        print(f"stori describe: error: no usable sentence for {len(missing)} classes ({', '.join(missing[:5])}); "
              "rerun to retry them (finished classes are kept)", file=sys.stderr)
        return 2
    print(f"stori describe: wrote {sum(len(result[c]) for c in names)} sentences for {len(names)} classes to {output}")
    return 0


def _names(classes: str | None, root: str | None, classnames: str | None) -> list[str]:
    if (classes is None) == (root is None):
        raise ValueError("give exactly one of --classes (names or a file) and --root (a FewShotImageFolder root)")
    if classes is not None:
        return read_class_names(classes)
    dm = FewShotImageFolder(root, classnames=classnames, clip_model="unused", pretrained=None)
    names = dm.folder_classnames()
    if not names:
        raise ValueError(f"{root} has no class folders (expected DIR/<class>/ or DIR/train/<class>/)")
    return read_class_names(names)


def _questions(path: str | None) -> list[str] | None:
    if path is None:
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"questions file not found: {file}")
    lines = [ln.strip() for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines or not all("{c}" in q for q in lines):
        raise ValueError(f"{file}: every question needs {{c}} where the class name goes")
    return lines

