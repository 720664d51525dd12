"""The oldest transformers loratune's code runs on, defined once: pyproject.toml's `transformers>=` agrees (a test
reads both). Below it the default `train` crashed with a traceback (4.56 / 4.57: no `eager_attention_forward` in
modeling_bert; 5.0: no `AttentionInterface.get_interface`) or refused the model as if its folder were broken (4.46:
from_pretrained takes no `dtype`). It is checked where a model's weights are loaded (models.load_classifier,
load_causal_lm, load_encoder, load_saved), so the CLI (exit 2) and the Python API alike refuse what loads a model
(train, tune, assess's probe, predict, evaluate; report's examples say why they are missing), while what reads
records and configs (diagnose, compare, rules, plan, show, params) runs on any transformers."""

from __future__ import annotations

import importlib.util

from packaging.version import InvalidVersion, Version

from loratune.errors import UserError

TRANSFORMERS_FLOOR = "5.1"


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


def below_floor(found: str) -> bool:
    """Whether a version is older than TRANSFORMERS_FLOOR by pip's rule (PEP 440, packaging's Version): 5.1.0.dev0
    and 5.1.0rc1 come before 5.1, so `transformers>=5.1` does not take them either. A version PEP 440 cannot read is
    not judged (False)."""
    try:
        return Version(found) < Version(TRANSFORMERS_FLOOR)
    except InvalidVersion:
        return False


def require_transformers() -> None:
    """A UserError when the installed transformers is older than TRANSFORMERS_FLOOR (or none is installed). A
    transformers importable without an installed distribution (a source checkout on PYTHONPATH, a bundled app) has
    no version to read: it is let through."""
    found = installed("transformers")
    if found is None and importable("transformers"):
        return
    if found is None or below_floor(found):
        raise UserError(f"loratune needs transformers >= {TRANSFORMERS_FLOOR} (found {found or 'none installed'})",
                        f"pip install -U 'transformers>={TRANSFORMERS_FLOOR}'")
