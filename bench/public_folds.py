"""Tools of the route that collects a fresh fold of public notebook runs for the external diagnosis corpus
(bench/diagnose_external.py; the route each fold's manifest `description` states). Collection is mechanical and
blind to the curves: a run is kept or not by the rules below, never by what its numbers look like.

    python bench/public_folds.py screen GITDIR [LISTED_PATH]    # which notebook and table a fetched repository gives
    python bench/public_folds.py keep GITDIR PATH TABLE NAME --fold public_xx --entries ENTRIES.json
    python bench/public_folds.py check public_xx                 # every table of the fold against every other fixture

The route (folds AD to AH): list `<name>.ipynb` in the file index (at most the first 30 entries), fetch each new
repository in listing order, `screen` it, `keep` its choice. A table qualifies with QUALIFY_ROWS_MIN or more rows
holding a numeric value in a column other than Step / Epoch / Training Loss; the choice is the listed notebook if it
qualifies, else the first qualifying notebook in path order, and its last qualifying table (the notebook's latest
training, what `loratune diagnose NOTEBOOK.ipynb` reads). Tables are found by loratune's own reader, so a manifest's
`table_index` means what the bench reads. `keep` copies the notebook byte for byte at the fetched commit (credentials
redacted by bench/redact_credentials.py, the entry says so) and refuses a table whose parsed rows repeat any fixture's.
The blind labelling that follows is described in bench/results/diagnose_external_notes.md.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from loratune.history_io import _nb_float, _nb_progress_tables  # noqa: E402
from redact_credentials import redact  # noqa: E402

EXTERNAL = ROOT / "tests" / "fixtures" / "external"
QUALIFY_ROWS_MIN = 3  # rows with a numeric eval value: fewer is no curve to read
NOTEBOOK_BYTES_MAX = 4_000_000  # notebooks above are not parsed (the largest fixture of folds C to AG is 3.5 MB)
NOT_EVAL_COLUMNS = ("step", "epoch", "training_loss")


def _git(gitdir: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "--git-dir", gitdir, *args], capture_output=True)


def _rows_key(table: dict) -> str:
    return hashlib.sha1(json.dumps(table["rows"]).encode()).hexdigest()


def qualifying_tables(nb: dict) -> list[tuple[int, int]]:
    """(table index, rows with a numeric eval value) of each qualifying progress table of a notebook."""
    out = []
    for k, t in enumerate(_nb_progress_tables(nb)):
        cols = [i for i, n in enumerate(t["norm"]) if n not in NOT_EVAL_COLUMNS]
        n = sum(1 for row in t["rows"] if any(i < len(row) and _nb_float(row[i]) is not None for i in cols))
        if n >= QUALIFY_ROWS_MIN:
            out.append((k, n))
    return out


def screen(gitdir: str, listed: str | None) -> tuple[str, int] | None:
    """Print every notebook at HEAD with a qualifying table; return the route's choice (path, table) or None."""
    head = _git(gitdir, "rev-parse", "HEAD").stdout.decode().strip()
    if not head:
        print("no HEAD")
        return None
    qual: dict[str, list[tuple[int, int]]] = {}
    for line in _git(gitdir, "ls-tree", "-r", "-l", "HEAD").stdout.decode().splitlines():
        meta, path = line.split("\t", 1)
        kind, size = meta.split()[1], meta.split()[3]
        if kind != "blob" or not path.lower().endswith(".ipynb"):
            continue
        if size.isdigit() and int(size) > NOTEBOOK_BYTES_MAX:
            print(f"SKIP {path} ({size} bytes)")
            continue
        blob = _git(gitdir, "show", f"HEAD:{path}")
        if blob.returncode != 0:
            print(f"ABSENT {path} (not in the snapshot)")
            continue
        try:
            found = qualifying_tables(json.loads(blob.stdout.decode("utf-8")))
        except (ValueError, UnicodeDecodeError, AttributeError, TypeError) as exc:
            print(f"UNREADABLE {path} ({type(exc).__name__})")
            continue
        if found:
            qual[path] = found
            print(f"QUAL {path}: " + ", ".join(f"table {k} ({n} eval rows)" for k, n in found))
    choice = listed if listed in qual else min(qual) if qual else None
    print(f"HEAD {head}; CHOICE: " + (f"{choice} {qual[choice][-1][0]}" if choice else "none"))
    return (choice, qual[choice][-1][0]) if choice else None


@functools.lru_cache(maxsize=1)
def _fixture_tables() -> dict[str, tuple[str, ...]]:
    """Every progress table of every fixture notebook: parsed rows' key -> the notebooks (repository-relative) that
    hold it."""
    keys: dict[str, tuple[str, ...]] = {}
    for p in sorted(EXTERNAL.glob("public*/*/*.ipynb")):
        try:
            for t in _nb_progress_tables(json.loads(p.read_text(encoding="utf-8"))):
                key = _rows_key(t)
                keys[key] = keys.get(key, ()) + (str(p.relative_to(ROOT)),)
        except (ValueError, UnicodeDecodeError):
            pass
    return keys


def keep(gitdir: str, path: str, table: int, name: str, fold: str, entries: Path) -> bool:
    head = _git(gitdir, "rev-parse", "HEAD").stdout.decode().strip()
    raw = _git(gitdir, "show", f"HEAD:{path}").stdout
    text = raw.decode("utf-8")
    t = _nb_progress_tables(json.loads(text))[table]
    dup = _fixture_tables().get(_rows_key(t))
    if dup:
        print(f"DUPLICATE of {dup[0]}: not kept")
        return False
    repo = next((c.replace("+", "/", 1) for c in Path(gitdir).parts if "+" in c), None)  # /work/.mirror/owner+name/
    dst = EXTERNAL / fold / name
    dst.mkdir(parents=True, exist_ok=True)
    clean = redact(text)
    (dst / "notebook.ipynb").write_bytes(raw if clean == text else clean.encode("utf-8"))
    _fixture_tables.cache_clear()  # the fixtures now hold this table too
    entry = {"name": name, "repo": repo, "path": path, "commit": head, "files": ["notebook.ipynb"],
             "table_index": table, "reduced": False}
    if clean != text:
        entry["redacted"] = "a credential in the notebook was replaced by REDACTED (bench/redact_credentials.py)"
    old = json.loads(entries.read_text()) if entries.is_file() else []
    entries.write_text(json.dumps([e for e in old if e["name"] != name] + [entry], indent=1))
    print(f"KEPT {name} ({repo} {path} @ {head[:10]}, table {table}, {len(t['rows'])} rows)")
    return True


def check(fold: str) -> int:
    """Each kept table of a fold against every table of every other fixture notebook, this fold's included."""
    bad = 0
    runs = json.loads((EXTERNAL / fold / "manifest.json").read_text())["runs"]
    for r in runs:
        path = EXTERNAL / fold / r["name"] / "notebook.ipynb"
        key = _rows_key(_nb_progress_tables(json.loads(path.read_text(encoding="utf-8")))[r["table_index"]])
        for where in _fixture_tables().get(key, ()):
            if where != str(path.relative_to(ROOT)):
                print(f"DUPLICATE {r['name']}: {where}")
                bad += 1
    print(f"{len(runs)} runs checked, {bad} duplicate(s)")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("screen")
    s.add_argument("gitdir")
    s.add_argument("listed", nargs="?")
    k = sub.add_parser("keep")
    for a in ("gitdir", "path"):
        k.add_argument(a)
    k.add_argument("table", type=int)
    k.add_argument("name")
    k.add_argument("--fold", required=True)
    k.add_argument("--entries", type=Path, required=True)
    c = sub.add_parser("check")
    c.add_argument("fold")
    a = ap.parse_args()
    if a.cmd == "screen":
        screen(a.gitdir, a.listed)
        return 0
    if a.cmd == "keep":
        return 0 if keep(a.gitdir, a.path, a.table, a.name, a.fold, a.entries) else 1
    return check(a.fold)


if __name__ == "__main__":
    raise SystemExit(main())
