"""Generate the zoo tables of docs/protocol.md and docs/zoos.md from the shipped zoo configs and profiles.

    python scripts/zoo_docs.py          # rewrite the tables in place
    python scripts/zoo_docs.py --check  # exit 1 if a table is out of date

Each generated table sits between ``<!-- zoo-docs: NAME -->`` and ``<!-- /zoo-docs -->`` in a page;
everything outside the markers is written by hand. The tables hold what the configs say (splits,
models, recipes, how the zoo is built) and the per-model latency of each zoo's committed reference
profile, so a model added to or removed from a config shows up in the docs or fails
``tests/test_zoo_docs.py``.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document this checkout's configs, whatever psml_bench is installed
PAGES = (ROOT / "docs" / "protocol.md", ROOT / "docs" / "zoos.md")
BLOCK = re.compile(r"(<!-- zoo-docs: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /zoo-docs -->)", re.S)
FASHION_MNIST_SHAPE = (1, 28, 28)  # the IDX format's images, when the config does not resize them


@functools.cache
def default_zoo() -> str:
    """The zoo of the default grid."""
    from psml_bench.bench.grid import load_grid

    return load_grid("default").zoo


@functools.cache
def zoo_configs() -> tuple:
    """Every shipped zoo config: the default grid's first, then its relatives (same name prefix), then by name."""
    from psml_bench.common.files import shipped_configs
    from psml_bench.zoo.config import load_zoo_config

    first = default_zoo()
    names = sorted(shipped_configs("zoos"), key=lambda name: (name != first, not name.startswith(first), name))
    return tuple(load_zoo_config(name) for name in names)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def _name(config) -> str:
    return f"`{config.name}`" + (" (default)" if config.name == default_zoo() else "")


def _inputs(config) -> str:
    channels = config.image.channels or FASHION_MNIST_SHAPE[0]
    size = config.image.size or FASHION_MNIST_SHAPE[1]
    return f"{channels}x{size}x{size}"


def _dataset(config) -> str:
    dataset = config.dataset
    if dataset.format == "idx":
        return (f"Fashion-MNIST IDX files: `${dataset.local_dir_env}`, `{dataset.local_dir}` (Debian package "
                f"`dataset-fashion-mnist`) or the Hub's `{dataset.hub_id}`")
    return f"Hugging Face `{dataset.hub_id}` (or a local copy: `--data`, `${dataset.local_dir_env}`)"


def _init(model) -> str:
    return "fine-tuned" if model.pretrained else "scratch"


def _models(config) -> str:
    tuned = sum(model.pretrained for model in config.models)
    scratch = len(config.models) - tuned
    parts = [f"{tuned} fine-tuned"] * bool(tuned) + [f"{scratch} from scratch"] * bool(scratch)
    return f"{len(config.models)} timm models, " + " and ".join(parts)


def _built(config) -> str:
    build = config.build
    where = {"cpu": "CPU", "auto": "GPU if visible, else CPU"}.get(build.device, f"`{build.device}`")
    text = f"{where}; {build.threads} thread{'s' * (build.threads > 1)} per model"
    if build.expected_gpu_minutes:
        text += f"; ~{build.expected_gpu_minutes:g} min on one GPU (estimate)"
    return text


def overview() -> str:
    """One row per zoo: dataset, input shape, models, how it is built."""
    return _table(["zoo", "dataset", "inputs", "models", "built on"],
                  [[_name(c), _dataset(c), _inputs(c), _models(c), _built(c)] for c in zoo_configs()])


def splits() -> str:
    """One row per zoo: split sizes and the timm architectures."""
    rows = []
    for config in zoo_configs():
        s = config.splits
        archs = ", ".join(f"`{model.arch}`" for model in config.models)
        rows.append([f"`{config.name}`", str(s.owner), str(s.attacker), str(s.benign), str(s.test),
                     f"{len(config.models)} ({archs})"])
    return _table(["zoo", "owner", "attacker", "benign", "test", "models"], rows)


def _recipe(model) -> str:
    train = model.train
    text = (f"{train.samples} samples x {train.epochs:g} epoch{'s' * (train.epochs != 1)}, batch {train.batch_size}, "
            f"lr {train.lr:g}, wd {train.weight_decay:g}, seed {train.seed}")
    return text + (f", {train.augment}" if train.augment != "none" else "")


def _kwargs(model) -> str:
    return ", ".join(f"{key}={value}" for key, value in model.kwargs.items()) or "—"


def models(name: str) -> str:
    """One row per model of zoo ``name``: architecture, input, init, recipe, and its latency in the
    committed reference profile when there is one."""
    from psml_bench.zoo.profiling import load_profile, reference_profile_path

    config = next(c for c in zoo_configs() if c.name == name)
    profile = None
    if config.reference_profile and reference_profile_path(config.reference_profile).is_file():
        profile = load_profile(reference_profile_path(config.reference_profile))
    header = ["id", "timm arch", "kwargs", "input size", "init", "recipe"]
    if profile is not None:
        header += [f"p50 / p90 ms ({config.reference_profile})"]
    rows = []
    for model in config.models:
        row = [f"`{model.id}`", f"`{model.arch}`", _kwargs(model),
               str(model.input_size or _inputs(config).split("x")[-1]), _init(model), _recipe(model)]
        if profile is not None:
            latency = profile["models"].get(model.id)
            row.append(f"{latency['p50_ms']:.2f} / {latency['p90_ms']:.2f}" if latency else "not profiled")
        rows.append(row)
    return _table(header, rows)


def generator(name: str) -> Callable[[], str]:
    """The function that renders table ``name`` (``overview``, ``splits`` or ``models-<zoo>``)."""
    if name.startswith("models-"):
        return lambda: models(name[len("models-"):])
    return {"overview": overview, "splits": splits}[name]


def render(text: str) -> str:
    """``text`` with every marked table regenerated."""
    return BLOCK.sub(lambda m: m.group(1) + generator(m.group("name"))() + m.group(4), text)


def main(argv: list[str]) -> int:
    stale = []
    for page in PAGES:
        text = page.read_text()
        new = render(text)
        if new != text:
            stale.append(page)
            if "--check" not in argv:
                page.write_text(new)
                print(f"wrote {page}")
    if "--check" in argv and stale:
        print(f"out of date: {', '.join(str(p) for p in stale)}: run python scripts/zoo_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
