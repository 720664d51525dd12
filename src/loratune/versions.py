"""The oldest transformers loratune's code runs on, defined once: pyproject.toml's `transformers>=` agrees (a test
reads both). Below it the default `train` crashed with a traceback (4.56 / 4.57: no `eager_attention_forward` in
modeling_bert; 5.0: no `AttentionInterface.get_interface`) or refused the model as if its folder were broken (4.46:
from_pretrained takes no `dtype`). It is checked where a model's weights are loaded (models.load_classifier,
load_causal_lm, load_encoder, load_saved), so the CLI (exit 2) and the Python API alike refuse what loads a model
(train, tune, assess's probe, predict, evaluate; report's examples say why they are missing), while what reads
records and configs (diagnose, compare, rules, plan, show, params) runs on any transformers."""

from __future__ import annotations

import importlib.util
import re

from loratune.errors import UserError

TRANSFORMERS_FLOOR = "5.1"


def release(version: str) -> tuple[int, ...]:
    """The leading release numbers of a version string: '5.1.0.dev0' -> (5, 1, 0), '4.57.1' -> (4, 57, 1)."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    numbers = tuple(int(n) for n in match.group(0).split(".")) if match else ()
    return numbers + (0,) * (3 - len(numbers))


def installed(dist: str) -> str | None:
    """The installed version of a distribution, or None (read from its metadata; nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def importable(module: str) -> bool:
    """Whether a top-level module can be imported (found on the path; it is not imported)."""
    return importlib.util.find_spec(module) is not None


def require_transformers() -> None:
    """A UserError when the installed transformers is older than TRANSFORMERS_FLOOR (or none is installed). A
    transformers importable without an installed distribution (a source checkout on PYTHONPATH, a bundled app) has
    no version to read: it is let through."""
    found = installed("transformers")
    if found is None and importable("transformers"):
        return
    if found is None or release(found) < release(TRANSFORMERS_FLOOR):
        raise UserError(f"loratune needs transformers >= {TRANSFORMERS_FLOOR} (found {found or 'none installed'})",
                        f"pip install -U 'transformers>={TRANSFORMERS_FLOOR}'")
