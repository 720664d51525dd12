"""The run directory: written as training goes, readable without torch (see docs/run-record.md).

`history.jsonl` is append-only and fsync'd per eval point; `run.json` and every other file are
written atomically (temp file + rename), so a crash or Ctrl-C never leaves a half-written record.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from loratune.errors import UserError

HISTORY = "history.jsonl"
RUN = "run.json"
CONFIG = "config.yaml"
CONFUSION = "confusion.json"
ADAPTER = "adapter"
LABEL_MAP = "label_map.json"


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null (readers treat null as 'non-finite or missing')."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _clean(obj.item())
    return obj


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(_clean(data), indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"'{path}' does not exist", "give a run directory made by `loratune train`") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"'{path}' is not valid JSON ({exc})", "the file is damaged; re-run") from None


class RunStore:
    """One run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER

    def create(self, config_yaml: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        hist = self.path / HISTORY
        if hist.exists():  # a fresh run in a reused directory starts a fresh history
            hist.unlink()
        write_atomic(self.path / CONFIG, config_yaml)

    def append_history(self, point: dict) -> None:
        with open(self.path / HISTORY, "a", encoding="utf-8") as f:
            f.write(json.dumps(_clean(point), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_run(self, run: dict) -> None:
        write_json(self.path / RUN, run)

    def write_confusion(self, labels: tuple[str, ...], matrix, step: int) -> None:
        write_json(self.path / CONFUSION, {"labels": list(labels), "matrix": [list(map(int, r)) for r in matrix],
                                           "step": step})

    # readers -------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / RUN).is_file() and (self.path / CONFIG).is_file()

    def require(self) -> "RunStore":
        if not self.path.is_dir():
            raise UserError(f"run directory '{self.path}' does not exist", "give the output_dir of a training run")
        if not self.exists():
            raise UserError(f"'{self.path}' is not a loratune run directory (no {RUN} / {CONFIG})",
                            "give the output_dir of a `loratune train` run")
        return self

    def read_run(self) -> dict:
        return read_json(self.path / RUN)

    def read_history(self) -> list[dict]:
        p = self.path / HISTORY
        if not p.exists():
            return []
        points = []
        for line in p.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                points.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line after a hard kill: keep what is whole
        return points
