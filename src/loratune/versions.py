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
from typing import Any

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


def older_than(found: Any, floor: str | tuple[int, ...]) -> bool:
    """Whether a version string is older than `floor` ("5.1" or (4, 51)) by pip's rule (PEP 440, packaging's
    Version): dev builds and pre-releases of the floor come before it (4.51.0.dev0 < 4.51, as 5.1.0rc1 < 5.1). The one
    comparison of versions (below_floor; store.trainer_logs_next_lr read 4.51.0.dev0 as 4.51 by a regex while this
    read it as older). A string PEP 440 cannot read is compared by its leading release numbers (4.46.3-custom as
    4.46.3); no string, or none there: not judged (False)."""
    if not isinstance(found, str):
        return False
    bound = Version(floor if isinstance(floor, str) else ".".join(map(str, floor)))
    try:
        return Version(found) < bound
    except InvalidVersion:
        m = re.match(r"\s*[vV]?(\d+(?:\.\d+)*)", found)
        return m is not None and Version(m[1]) < bound


def below_floor(found: str) -> bool:
    """Whether a version is older than TRANSFORMERS_FLOOR by pip's rule (older_than): 5.1.0.dev0 and 5.1.0rc1 come
    before 5.1, so `transformers>=5.1` does not take them either."""
    return older_than(found, TRANSFORMERS_FLOOR)


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
