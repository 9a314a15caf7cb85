"""Run a whole experiment grid (methods × datasets × shots × seeds), one `stori fit` per cell, then `stori report`.

Each cell runs the shipped config ``configs/<method>/<dataset>_<k>shot.yaml`` with ``--data.seed`` and
``--seed_everything`` set to the seed, in a fresh process, logging to
``<out_dir>/<method>/<dataset>_<k>shot/seed<s>/version_*`` (its output goes to ``grid.log`` there). A cell whose
``test_results.json`` exists is skipped; one with a ``last.ckpt`` but no results resumes from it. A failed cell
is reported with its log and the grid goes on (exit status 1 at the end). Options that start with
``--data.``, ``--model.``, ``--trainer.`` or ``--seed_everything`` are passed to every cell.

Examples::

    stori grid --methods stori,taskres_base,coop --datasets dtd,flowers102 --shots 1,2,4,8,16 --seeds 1,2,3 --data.root /data
    stori grid --methods stori,coop --datasets dtd --print --data.root /data > cells.txt   # one command per line

``--print`` writes the cells' commands instead of running them: run them with GNU parallel
(``parallel -j 4 < cells.txt``) or as a SLURM job array (``sed -n "${SLURM_ARRAY_TASK_ID}p" cells.txt | bash``),
then ``stori report <out_dir>``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from stori_pl.cli.common import function_parser, run_function
from stori_pl.lightning.results import RESULTS_FILE
from stori_pl.cli.report import report

PASS_THROUGH = ("--data.", "--model.", "--trainer.", "--seed_everything")
VALID_SHOTS = (1, 2, 4, 8, 16)


def config_dir() -> Path:
    """The shipped configs (``stori_pl/configs`` links to the repository's ``configs/``)."""
    return Path(__file__).resolve().parents[1] / "configs"


def available() -> dict[str, set[str]]:
    """``{method: {dataset, ...}}`` of the shipped per-method configs."""
    out: dict[str, set[str]] = {}
    for path in sorted(config_dir().glob("*/*_*shot.yaml")):
        out.setdefault(path.parent.name, set()).add(path.stem.rsplit("_", 1)[0])
    return out


@dataclass
class Cell:
    """One run of the grid."""

    method: str
    dataset: str
    shots: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}/{self.dataset}_{self.shots}shot/seed{self.seed}"

    @property
    def config(self) -> Path:
        return config_dir() / self.method / f"{self.dataset}_{self.shots}shot.yaml"

    def verb(self) -> str:
        """``test`` for methods that train nothing (zero-shot), else ``fit``."""
        import yaml

        model = (yaml.safe_load(self.config.read_text(encoding="utf-8")) or {}).get("model") or {}
        return "test" if str(model.get("class_path", "")).endswith(".ZeroShotCLIP") else "fit"

    def state(self, out_dir: Path) -> str:
        """``done`` (results exist), ``resume`` (a last.ckpt without results) or ``new``."""
        folder = out_dir / self.name
        if any(folder.glob(f"version_*/{RESULTS_FILE}")):
            return "done"
        return "resume" if any(folder.glob("version_*/checkpoints/last.ckpt")) else "new"

    def command(self, out_dir: Path, extra: list[str], resume: bool) -> list[str]:
        cmd = ["stori", self.verb(), "--config", str(self.config), "--data.seed", str(self.seed),
               "--seed_everything", str(self.seed), "--trainer.logger.init_args.save_dir", str(out_dir),
               "--trainer.logger.init_args.name", self.name, *extra]
        return cmd + (["--ckpt_path", "last"] if resume else [])


def _split(value: str, what: str, valid, cast=str) -> list:
    items = [cast(v.strip()) for v in str(value).split(",") if v.strip()]
    bad = [v for v in items if v not in valid]
    if not items or bad:
        raise ValueError(f"unknown {what} {', '.join(map(str, bad)) or '(none given)'}; "
                         f"choose from: {', '.join(map(str, sorted(valid)))}")
    return items


def plan(methods: str, datasets: str, shots: str, seeds: str) -> list[Cell]:
    """The cells, method-major; every name checked against the shipped configs (ValueError lists valid ones)."""
    configs = available()
    method_list = _split(methods, "method(s)", configs)
    common = set.intersection(*(configs[m] for m in method_list))
    dataset_list = _split(datasets, f"dataset(s) for {', '.join(method_list)}", common)
    shot_list = _split(shots, "shots", VALID_SHOTS, int)
    try:
        seed_list = [int(s) for s in str(seeds).split(",") if s.strip()]
    except ValueError as err:
        raise ValueError(f"--seeds: comma-separated integers, e.g. 1,2,3 ({err})") from None
    if not seed_list or min(seed_list) < 1:
        raise ValueError(f"--seeds: positive integers, e.g. 1,2,3 (got {seeds!r})")
    return [Cell(m, d, k, s) for m in method_list for d in dataset_list for k in shot_list for s in seed_list]


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def run_cell(cell: Cell, out_dir: Path, extra: list[str]) -> tuple[bool, Path]:
    """Run one cell in a fresh ``stori`` process; its output goes to ``<run folder>/grid.log``."""
    folder = out_dir / cell.name
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "grid.log"
    cmd = cell.command(out_dir, extra, resume=cell.state(out_dir) == "resume")
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.run([sys.executable, "-m", "stori_pl", *cmd[1:]], stdout=f, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    return rc == 0, log


def grid(methods: str, datasets: str, shots: str = "1,2,4,8,16", seeds: str = "1,2,3", out_dir: Path = Path("runs/grid"),
         devices: str | None = None, print: bool = False, extra: list[str] | None = None) -> int:  # noqa: A002
    """Run (or print) every cell of the grid, then write the Table-2 report.

    Args:
        methods: Comma-separated methods (folders of ``configs/``: stori, taskres_base, taskres_cupl, coop,
            tip_adapter, tip_adapter_f, linear_probe, zero_shot, cupl, intcoop).
        datasets: Comma-separated datasets (imagenet, dtd, sun397, flowers102, caltech101, food101, toy_shapes;
            intcoop also has <dataset>_b2n, the base-to-novel configs, at 16 shots).
        shots: Comma-separated shots (1, 2, 4, 8, 16).
        seeds: Comma-separated seeds (CoOp: 1, 2, 3).
        out_dir: Folder of the runs and of ``table2.md`` / ``table2.csv``.
        devices: Passed to every run as ``--trainer.devices``.
        print: Print one command per line (for GNU parallel or a SLURM job array) instead of running them.
        extra: Options passed to every run (``--data.root /data``; given on the command line without this name).

    Returns:
        0 when every cell succeeded, 1 otherwise.
    """
    cells = plan(methods, datasets, shots, seeds)
    extra = list(extra or []) + (["--trainer.devices", str(devices)] if devices is not None else [])
    if print:
        for cell in cells:
            sys.stdout.write(shlex.join(cell.command(out_dir, extra, resume=False)) + "\n")
        return 0
    failed, start, ran = [], time.monotonic(), 0
    todo = [c for c in cells if c.state(out_dir) != "done"]
    sys.stderr.write(f"stori grid: {len(cells)} cells, {len(cells) - len(todo)} already done, results under {out_dir}\n")
    for i, cell in enumerate(todo, start=len(cells) - len(todo) + 1):
        t = time.monotonic()
        ok, log = run_cell(cell, out_dir, extra)
        ran += 1
        elapsed = time.monotonic() - start
        left = elapsed / ran * (len(todo) - ran)
        status = f"done in {_duration(time.monotonic() - t)}" if ok else f"FAILED (log: {log})"
        sys.stderr.write(f"[{i}/{len(cells)}] {cell.name}: {status}; elapsed {_duration(elapsed)}, "
                         f"about {_duration(left)} left\n")
        if not ok:
            failed.append((cell, log))

    report([str(out_dir)], markdown=out_dir / "table2.md", csv=out_dir / "table2.csv")
    for cell, log in failed:
        sys.stderr.write(f"stori grid: {cell.name} failed; see {log}\n")
    return 1 if failed else 0


def build_parser():
    """Command-line options of ``stori grid`` (from :func:`grid`'s signature and docstring)."""
    return function_parser(grid, "stori grid", __doc__, positional=False, skip={"extra"})


def main(argv: list[str] | None = None) -> int:
    """Run ``stori grid``: options for the runs (``--data.root`` ...) are split off and passed to every cell."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):  # a bare `--print` (as in the docs of other tools) means `--print true`
        if arg == "--print" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            argv.insert(i + 1, "true")
    own, extra, i = [], [], 0
    while i < len(argv):
        if argv[i].startswith(PASS_THROUGH):
            takes_value = "=" not in argv[i] and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            extra += argv[i : i + 1 + int(takes_value)]
            i += 1 + int(takes_value)
        else:
            own.append(argv[i])
            i += 1
    return run_function(lambda **kw: grid(**kw, extra=extra), build_parser(), own)
