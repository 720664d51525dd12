"""Frozen-prefix cache: run the frozen bottom of the model once, then train and score only the top.

When no trainable parameter lives in the embeddings or in blocks 0..k-1 (the adapter sits in the top
blocks only: `layers_to_transform: top:K`, or every target written `group@top:K`, with bias=none), the
hidden states entering block k depend on nothing but the frozen weights and the token ids. They are
computed once, with the model in eval mode (no dropout) under inference mode and in the run's precision
(under bf16 autocast when the run trains under it, `attach(autocast=)`, however the caller got there), and kept
(in float16 or float32, below); every later forward pass (training steps and evaluation alike) feeds them to the
model in place of its embedding module and runs only blocks k..L-1, the pooler and the head, with the model's own
code for the attention mask and the pooling. The training split's states are rounded to float16 (STORE_DTYPE); the
scored splits' (validation, the train subsample) are kept in float32 (SCORING_STORE_DTYPE), so a run's recorded scores
are those `loratune evaluate` gives on its saved adapter. Backward never went below block k anyway, so the saving
is the forward pass of the embeddings and the k bottom blocks at every step.

An in-memory entry is filled lazily: a row's states are computed (eval mode, no gradient) the first
time a batch holding it is fed, before that batch's forward, so the first trial pays for the rows it
uses and no separate pass over every row runs before training (a 22 s build on BANKING77 train before;
a run shorter than an epoch never computes the rows it does not reach). They are computed in the batches `build`
uses (the scoring batches: each row at its own padded length), never padded to the training batch's longest row,
so an entry's contents depend on its key alone, not on which run filled it. Entries bound for disk are
built whole, up front (`build`), as they are read back by later processes.

The states are keyed by (architecture, k, the precision they were computed in, a hash of the frozen weights, a
hash of the token ids, the padding they were computed under), so the same base model, data, tokenizer, max_length and precision hit the same entry:
the trials of a sweep in one process share it. Entries live in memory up to `MEMORY_BUDGET_MB` in all (least recently used go
first; a run's own entries never pass it: one that would goes to disk, or when the folder cannot take it the run goes
uncached); one larger than `DISK_ENTRY_MB` is written under `$LORATUNE_CACHE_DIR/prefix` (default
`~/.cache/loratune/prefix`) while it is computed, and read back memory-mapped (found there by later
processes too).

What it changes against the normal path: no dropout inside the frozen part (embeddings and blocks
0..k-1) during training, and the training states entering block k carry float16 rounding (relative error
about 5e-4); scoring is the plain forward's. Dropout in the trained blocks, in LoRA and in the head is untouched.

A fault in the cache (no disk space for an entry, states float16 cannot hold) never fails the run: it goes on
with the plain forward, and says so once on stderr and in run.json's prefix_cache (`used: false`, `reason`). A disk
entry that does not hold what its key promises (rows, width, dtype, finite values) is rebuilt.

Architectures: those in `SPLICE_TABLE`, whose embedding module's output is the first block's input.
Others (and full fine-tuning, or an adapter in block 0) take the normal path; `attach` says why.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from loratune.config import cache_root
from loratune.errors import disk_full
from loratune.heads import transformers_model

# model_type -> (embedding module, block list), dotted paths inside the backbone (`model.base_model`
# of the transformers model). The embedding module's output must be block 0's input, untouched.
_BERT = ("embeddings", "encoder.layer")
SPLICE_TABLE: dict[str, tuple[str, str]] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "camembert": _BERT,
    "distilbert": ("embeddings", "transformer.layer"),
    "llama": ("embed_tokens", "layers"),
}
def _memory_budget_mb(default: float = 1024.0) -> float:
    """LORATUNE_PREFIX_CACHE_MB: megabytes for all in-memory entries; a value that is no number is said, once, and
    the default kept (read at import: a traceback there would stop every command)."""
    text = os.environ.get("LORATUNE_PREFIX_CACHE_MB")
    if text is None:
        return default
    try:
        value = float(text)
        if value >= 0 and math.isfinite(value):
            return value
    except ValueError:
        pass
    warnings.warn(f"LORATUNE_PREFIX_CACHE_MB={text!r} is not a number of megabytes (e.g. 2048); using {default:g}",
                  stacklevel=2)
    return default


MEMORY_BUDGET_MB = _memory_budget_mb()  # all in-memory entries
DISK_ENTRY_MB = 256.0  # an entry larger than this goes to disk (memory-mapped)
STORE_DTYPE = np.float16  # the training split's states: half the memory, rounding the run's training may carry
# The scoring splits' states (validation, the train subsample: `attach(scoring=)`): the scores a run records must be the
# ones `loratune evaluate` gives on its saved adapter, which runs the plain forward. Through float16 states they were
# not (the demo's tiny BERT: val/loss 1.40577 recorded, 1.40700 evaluated); in float32 they are, bit for bit, for 7 MB
# more on MiniLM's demo validation split (9,644 tokens x 384: 7.1 MB in float16, 14.1 in float32) and 6 MB more on
# its 512-row train subsample.
SCORING_STORE_DTYPE = np.float32


# rows of a disk entry checked for finite values at a time when it is loaded (bounded memory: 64k rows of 384 float16)
FINITE_CHECK_ROWS = 1 << 16


class CacheFault(Exception):
    """The cache cannot serve this run (no space for a disk entry, states its dtype cannot hold): the run goes on
    without it (`attach`, `Feed`), as the cache is an optimisation only."""


def _to_store(hidden: torch.Tensor, dtype=STORE_DTYPE) -> np.ndarray:
    """A batch of states as stored (`dtype`, on the host), converted by torch in one pass (no float32 copy).
    CacheFault when a stored value is not finite: a residual stream beyond float16's range (65504) turns into inf
    there, and every later forward into a non-finite loss that the plain forward would not have."""
    stored = hidden.to(device="cpu", dtype=torch.from_numpy(np.empty(0, dtype=dtype)).dtype).numpy()
    if not np.isfinite(stored).all():
        top = float(hidden.detach().float().abs().nan_to_num(nan=math.inf).max())
        raise CacheFault(f"the states entering the first trained block reach |x| = {top:.3g}, not finite in "
                         f"{np.dtype(dtype).name} (which holds up to {float(np.finfo(dtype).max):g})")
    return stored


def cache_dir() -> Path:
    return cache_root() / "prefix"


# ----------------------------------------------------------------------------------------------
# stored states: one flat [tokens, hidden] array + row offsets (no padding stored)


@dataclass
class PrefixStates:
    """Hidden states entering the first trained block, for every row of one encoded split.

    values: [sum of row lengths, hidden] of the entry's store dtype (STORE_DTYPE, float16, for the training split;
    SCORING_STORE_DTYPE, float32, for a scored one), in memory or memory-mapped; offsets: int64 [n + 1], row i's
    states are values[offsets[i]:offsets[i + 1]].
    """

    values: np.ndarray
    offsets: np.ndarray
    on_disk: bool = False
    ready: np.ndarray | None = None  # bool [n]: rows computed so far (lazy entries); None: every row

    def missing(self, rows) -> np.ndarray:
        """The rows among `rows` whose states are not computed yet (int64)."""
        rows = np.asarray(rows, dtype=np.int64)
        return rows[:0] if self.ready is None else rows[~self.ready[rows]]

    def put(self, rows, hidden: np.ndarray) -> None:
        """Store the states of `rows` from a padded batch `hidden` [len(rows), longest, hidden]."""
        for j, row in enumerate(rows):
            self.values[self.offsets[row]:self.offsets[row + 1]] = hidden[j, : self.offsets[row + 1] - self.offsets[row]]
        if self.ready is not None:
            self.ready[np.asarray(rows, dtype=np.int64)] = True

    @property
    def nbytes(self) -> int:
        return 0 if self.on_disk else int(self.values.nbytes)

    def padded(self, rows, longest: int) -> torch.Tensor:
        """States of `rows`, right-padded with zeros to `longest`: [len(rows), longest, hidden] of values' dtype."""
        rows = np.asarray(rows, dtype=np.int64)
        start = self.offsets[rows]
        length = self.offsets[rows + 1] - start
        pos = np.arange(longest)
        valid = pos[None, :] < length[:, None]  # [b, longest]
        flat = np.where(valid, start[:, None] + pos[None, :], 0)
        out = np.asarray(self.values[flat.reshape(-1)]).reshape(len(rows), longest, -1)
        out[~valid] = 0  # padded positions are masked out as keys and never pooled
        return torch.from_numpy(out)


_MEMORY: OrderedDict[str, PrefixStates] = OrderedDict()  # key -> states, least recently used first


def clear() -> None:
    """Forget the in-process entries (disk entries stay)."""
    _MEMORY.clear()


def _remember(key: str, states: PrefixStates) -> None:
    """Keep `states` for later runs of this process, the least recently used entries dropped past MEMORY_BUDGET_MB
    (`attach` never gives a run more in-memory states than that, so the entries it holds stay)."""
    _MEMORY[key] = states
    _MEMORY.move_to_end(key)
    budget = MEMORY_BUDGET_MB * 2**20
    while _MEMORY and sum(s.nbytes for s in _MEMORY.values()) > budget:
        _MEMORY.popitem(last=False)


def _finite(values: np.ndarray) -> bool:
    """Whether every value is finite, read in slices of FINITE_CHECK_ROWS rows (a memory-mapped entry may be GBs)."""
    return all(np.isfinite(values[i:i + FINITE_CHECK_ROWS]).all() for i in range(0, len(values), FINITE_CHECK_ROWS))


def _load_disk(key: str, offsets: np.ndarray, hidden: int, dtype=STORE_DTYPE) -> PrefixStates | None:
    """The entry `key` from disk when it holds what this split needs: the rows' `offsets` (from the token ids) and
    `hidden` values per token (0: not known) of `dtype`, all finite; None (recompute) otherwise."""
    folder = cache_dir()
    values_path, offsets_path = folder / f"{key}.values.npy", folder / f"{key}.offsets.npy"
    if not values_path.is_file() or not offsets_path.is_file():
        return None
    try:
        vals, offs = np.load(values_path, mmap_mode="r"), np.load(offsets_path)
        # a damaged file (another entry's values, a wrong width or dtype, NaN or inf written over it) is rejected,
        # as a forward on it fails with a shape error or diverges, blamed on training
        if (not np.array_equal(offs, offsets) or vals.dtype != np.dtype(dtype)
                or vals.ndim != 2 or vals.shape[0] != int(offsets[-1]) or (hidden and vals.shape[1] != hidden)
                or not _finite(vals)):
            return None
    except (OSError, ValueError, EOFError):  # a damaged file (empty, cut short): recompute
        return None
    return PrefixStates(vals, offs, on_disk=True)


# ----------------------------------------------------------------------------------------------
# splicing the cached states into the model


class _CachedInput(nn.Module):
    """Stands in for the embedding module during a cached forward: returns the batch's states."""

    def __init__(self):
        super().__init__()
        self.states: torch.Tensor | None = None

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.states


class _Captured(Exception):
    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _parent(module: nn.Module, path: str) -> tuple[nn.Module, str]:
    head, _, name = path.rpartition(".")
    return (_get(module, head) if head else module), name


class Splice:
    """The model with its bottom k blocks cut off: `feed(states)` makes the next forward start at block k.

    Swapping is two attribute assignments per call, undone on exit, so the model's structure (and its
    state dict, saving, the normal forward) is untouched outside the `with` block.
    """

    def __init__(self, model: nn.Module, model_type: str, first_layer: int, autocast: bool = False):
        embed_path, blocks_path = SPLICE_TABLE[model_type]
        self.autocast = autocast  # compute the states under bf16 autocast (the run's precision)
        backbone = _backbone(model)
        self.model = model
        self.k = first_layer
        self.embed_parent, self.embed_name = _parent(backbone, embed_path)
        self.embed = getattr(self.embed_parent, self.embed_name)
        self.blocks_parent, self.blocks_name = _parent(backbone, blocks_path)
        self.blocks = getattr(self.blocks_parent, self.blocks_name)
        self.top = nn.ModuleList(list(self.blocks)[first_layer:])
        self.stub = _CachedInput()

    @contextlib.contextmanager
    def feed(self, states: torch.Tensor):
        """Inside: model(**batch) runs blocks k.. on `states` [batch, longest, hidden] (the batch's ids
        and mask are still passed: masks, positions and decoder pooling come from them)."""
        self.stub.states = states
        setattr(self.embed_parent, self.embed_name, self.stub)
        setattr(self.blocks_parent, self.blocks_name, self.top)
        try:
            yield
        finally:
            setattr(self.embed_parent, self.embed_name, self.embed)
            setattr(self.blocks_parent, self.blocks_name, self.blocks)
            self.stub.states = None

    def prefix_modules(self) -> list[nn.Module]:
        return [self.embed, *list(self.blocks)[: self.k]]

    @torch.inference_mode()
    def capture(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The hidden states entering block k for one padded batch: [batch, longest, hidden].
        Runs the model's own forward and stops it at block k's input, in the run's precision: under bf16 autocast
        when the run trains under it (its frozen linear weights may be held in bf16 then, precision.py), whether the
        caller (a training step, an evaluation, the up-front build) is inside autocast or not."""
        def stop(module, args, kwargs):
            hidden = args[0] if args else next(kwargs[n] for n in ("hidden_states", "hidden_state", "x")
                                               if n in kwargs)
            raise _Captured(hidden)

        handle = self.blocks[self.k].register_forward_pre_hook(stop, with_kwargs=True)
        device = next(self.model.parameters()).device
        try:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.autocast):
                self.model(**batch)
        except _Captured as got:
            return got.hidden
        finally:
            handle.remove()
        raise RuntimeError(f"block {self.k} was never reached")


def _backbone(model: nn.Module) -> nn.Module:
    """The transformers backbone (BertModel, LlamaModel) under a peft wrapper and a task head."""
    hf = transformers_model(model)
    return getattr(hf, hf.base_model_prefix, hf)


def first_trained_layer(model: nn.Module, model_type: str) -> int:
    """Index of the lowest block holding a trainable parameter (0 when the embeddings train too);
    the number of blocks when none trains."""
    embed_path, blocks_path = SPLICE_TABLE[model_type]
    backbone = _backbone(model)
    if any(p.requires_grad for p in _get(backbone, embed_path).parameters()):
        return 0
    blocks = _get(backbone, blocks_path)
    for i, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            return i
    return len(blocks)


# ----------------------------------------------------------------------------------------------
# keys and building


def _weights_hash(modules: list[nn.Module]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for i, mod in enumerate(modules):
        for name, t in mod.state_dict().items():
            t = t.detach().contiguous().cpu()
            h.update(f"{i}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


# config fields that do not change what the frozen blocks compute in eval mode: the head's labels, dropout (off while
# the states are built), where the model was read from, the dtype (the weights' hash holds their dtypes)
_CONFIG_NOT_IN_KEY = ("_name_or_path", "architectures", "transformers_version", "id2label", "label2id", "num_labels",
                      "problem_type", "torch_dtype", "dtype", "finetuning_task")


def _config_hash(config) -> str:
    d = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_NOT_IN_KEY and "dropout" not in k}
    return hashlib.blake2b(json.dumps(d, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def _ids_hash(ids: list[list[int]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids)).tobytes())
    h.update(np.fromiter((t for x in ids for t in x), dtype=np.int64).tobytes())
    return h.hexdigest()


def reserve(path: Path) -> None:
    """Allocate the blocks of the file at `path` (its full size) before it is written through a memory map: a write
    to a sparse file's page with no free block left is a SIGBUS that kills the process (no exception, no record, the
    temporary file left behind). OSError (ENOSPC, EDQUOT) when the disk cannot hold it."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
            return
        except AttributeError:  # no posix_fallocate on this system (macOS, Windows)
            pass
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):  # not only "not supported here"
                raise
    if shutil.disk_usage(path.parent).free < size:  # no way to reserve: the free space at least
        raise OSError(errno.ENOSPC, f"{size / 2**20:.0f} MB needed, {shutil.disk_usage(path.parent).free / 2**20:.0f} "
                                    f"MB free", str(path.parent))


def build(splice: Splice, ids: list[list[int]], make_batch: Callable, plan: Callable,
          path: Path | None = None, dtype=STORE_DTYPE) -> PrefixStates:
    """Run the frozen prefix over every row (the batches `plan(lengths)` gives, eval mode) into one
    flat array; written straight into a memory-mapped file at `path` when given (bounded memory).
    CacheFault (states the store's dtype cannot hold) or OSError (no space on the disk) leave no file behind."""
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    hf = transformers_model(splice.model)
    was_training = hf.training
    hf.eval()  # no dropout in the frozen part
    values = None
    tmp = None
    try:
        for rows in plan(lengths):
            hidden = splice.capture(make_batch([ids[i] for i in rows]))  # [b, longest, hidden]
            hidden = _to_store(hidden, dtype)
            if values is None:
                shape = (int(offsets[-1]), hidden.shape[-1])
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = _temporary(path)
                    values = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
                    reserve(tmp)
                else:
                    values = np.empty(shape, dtype=dtype)
            for j, row in enumerate(rows):
                values[offsets[row]:offsets[row + 1]] = hidden[j, : lengths[row]]
    except BaseException:  # Ctrl-C or an error mid-build: the full-size temporary file must not stay behind
        if tmp is not None:
            del values
            with contextlib.suppress(OSError):  # the error that stopped the build is the one to report
                tmp.unlink(missing_ok=True)
        raise
    finally:
        hf.train(was_training)
    if values is None:  # an empty split
        values = np.zeros((0, 1), dtype=dtype)
    if tmp is not None:
        values.flush()
        del values
        os.replace(tmp, path)
        return PrefixStates(np.load(path, mmap_mode="r"), offsets, on_disk=True)
    return PrefixStates(values, offsets)


def _writable(folder: Path) -> bool:
    """Whether the cache folder can take an entry (created if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def _save_offsets(key: str, offsets: np.ndarray) -> None:
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(folder / f"{key}.offsets.npy", ".npy")  # np.save adds .npy to a name without it
    try:
        np.save(tmp, offsets)
        os.replace(tmp, folder / f"{key}.offsets.npy")
    except BaseException:  # a full disk: no half-written temporary file stays
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


# A temporary file's writer is named by its pid and by where that pid means something: a process in another PID
# namespace or on another host sharing the folder (a Docker mount, an NFS home) sees no process by that pid, and its
# cleanup deleted a live build's file (whose os.replace then failed). Only this namespace's files are judged by their
# pid; another's are removed past FOREIGN_TEMPORARY_AGE_S since last written: a live build writes its file through a
# memory map, whose mtime need not move before it is flushed, and the largest builds take up to an hour, so a day leaves
# every live writer alone and gives back a dead one's space within a day.
FOREIGN_TEMPORARY_AGE_S = 24 * 3600
# <entry file>.tmp-<writer's namespace tag>-<pid>[.npy]; files of loratune before the tag (.tmp-<pid>) count as foreign
_TEMPORARY = re.compile(r"\.tmp-(?:([0-9a-f]{12})-)?(\d+)(\.npy)?$")


@functools.lru_cache(maxsize=None)
def _namespace_tag() -> str:
    """Where this process's pid names it: the host, its boot, its PID namespace (12 hex digits of their hash)."""
    parts = [socket.gethostname()]
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text(encoding="utf-8").strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):
        try:
            parts.append(read())
        except OSError:  # not Linux: the host name alone
            parts.append("")
    return hashlib.blake2b("|".join(parts).encode(), digest_size=6).hexdigest()


def _temporary(path: Path, suffix: str = "") -> Path:
    """The temporary file `path` is written to before its rename (_TEMPORARY)."""
    return path.with_name(f"{path.name}.tmp-{_namespace_tag()}-{os.getpid()}{suffix}")


def _alive(pid: int) -> bool:
    """Whether process `pid` of this PID namespace exists (on POSIX; elsewhere assumed: signal 0 is no probe there, it
    ends the process)."""
    if os.name != "posix" or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale(p: Path, tag: str | None, pid: int) -> bool:
    if tag == _namespace_tag():
        return not _alive(pid)
    try:  # another namespace's, host's, or an older loratune's: its pid means nothing here, only its age does
        return time.time() - p.stat().st_mtime > FOREIGN_TEMPORARY_AGE_S
    except OSError:
        return False


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Delete the temporary files whose writer is surely gone (killed mid-build: kill -9, a bus error, power loss): each
    a full-size values file nobody finishes or removes. A live writer's file is a build under way and stays; one
    written from another PID namespace or host stays until FOREIGN_TEMPORARY_AGE_S old. Returns the names removed."""
    removed = []
    with contextlib.suppress(OSError):  # no folder yet, or not readable: nothing to clean
        for p in folder.iterdir():
            m = _TEMPORARY.search(p.name)
            if m and _stale(p, m.group(1), int(m.group(2))):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p.name)
    return removed


def _write_failure(size: int, exc: OSError) -> str:
    """Why an entry could not be written: a full disk or quota (errors.disk_full) is said as such; any other failure
    (the folder changed under the run, a temporary file removed by another process) with its own cause, never as
    "no space"."""
    where = f"the {size / 2**20:.3g} MB entry could not be written under {cache_dir()}"
    if disk_full(exc):
        return f"{where} ({exc.strerror or exc}); free space there or set LORATUNE_CACHE_DIR to a disk with room"
    about = f": {exc.filename}" if exc.filename else ""
    return (f"{where} ({exc.strerror or exc}{about}); if another process shares that folder, set LORATUNE_CACHE_DIR "
            f"to one of this run's own")


def _uncached(note: dict, reason: str) -> dict:
    """Make `note` (the run record's prefix_cache entry) say the run goes on without the cache, and why, once (in
    the record and on stderr): a fault in the cache never fails the run, its forwards are the plain ones from then."""
    if note.get("used") is not False:
        note.update({"used": False, "reason": f"{reason}; normal forward path"})
        print(f"loratune: prefix cache not used: {note['reason']}", file=sys.stderr)
    return note


# ----------------------------------------------------------------------------------------------
# the entry point used by the training loop


class Feed:
    """What an encoded split carries when its prefix is cached: `with feed(rows, longest, device):`
    around `model(**batch)` makes that forward start at the first trained block, on the cached states
    of `rows` padded to the batch's `longest` (shapes match the collated ids and mask). Rows of a lazy
    entry not computed yet are computed first (eval mode, no gradient) and counted in `stats`.
    `note` is the run's record of the cache, shared by the run's feeds: when a row's states cannot be stored
    (CacheFault) it says so, and every feed of the run leaves the forward alone from then on (the plain forward)."""

    def __init__(self, splice: Splice, states: PrefixStates, ids: list[list[int]] | None = None,
                 make_batch: Callable | None = None, stats: dict | None = None, note: dict | None = None,
                 plan: Callable | None = None):
        self.splice = splice
        self.states = states
        self.ids = ids
        self.make_batch = make_batch
        self.plan = plan
        self.stats = stats if stats is not None else {}
        self.note = note if note is not None else {}

    @property
    def live(self) -> bool:
        return self.note.get("used", True) is not False

    def fill(self, rows: np.ndarray) -> None:
        """Compute the states of `rows` in the batches `plan` cuts them into, as `build` does (a scoring layout: each
        row at its own padded length), never in the batch that asked for them: padded to a mixed training batch's
        longest row, a row's states moved with the rows beside it (3,774 of 8,416 float16 values of one entry
        differed between two runs of other batch sizes), so an entry's contents depended on which run filled it."""
        t0 = time.perf_counter()
        hf = transformers_model(self.splice.model)
        was_training = hf.training
        hf.eval()  # no dropout in the frozen part, as in `build`
        rows = np.asarray(rows, dtype=np.int64)
        lengths = np.fromiter((len(self.ids[i]) for i in rows), dtype=np.int64, count=len(rows))
        try:
            for part in (self.plan(lengths) if self.plan is not None else [np.arange(len(rows))]):
                part = rows[np.asarray(part, dtype=np.int64)]
                hidden = self.splice.capture(self.make_batch([self.ids[i] for i in part]))
                self.states.put(part, _to_store(hidden, self.states.values.dtype))
        finally:
            hf.train(was_training)
        self.stats["rows_computed"] = self.stats.get("rows_computed", 0) + len(rows)
        self.stats["compute_s"] = round(self.stats.get("compute_s", 0.0) + time.perf_counter() - t0, 3)

    @contextlib.contextmanager
    def __call__(self, rows, longest: int, device: torch.device):
        missing = self.states.missing(rows) if self.live else []
        if len(missing):
            try:
                self.fill(missing)
            except CacheFault as fault:  # the rows computed so far stay valid; this run goes on without them
                _uncached(self.note, str(fault))
        if not self.live:
            yield
            return
        # the dtype the top's input has in a plain forward: the embeddings' (a top block's own weights may be held
        # in bf16: precision.frozen_weights_in_bf16)
        dtype = next(p for p in self.splice.embed.parameters()).dtype
        states = self.states.padded(rows, longest).to(device=device, dtype=dtype)
        with self.splice.feed(states):
            yield


def attach(model: nn.Module, mode: str, method: str, splits: list, make_batch: Callable, plan: Callable,
           autocast: bool = False, layout: str = "", scoring: list = ()) -> dict:
    """Give each encoded split (objects with `.ids` and a `.prefix` slot) a `Feed` when the prefix
    cache applies; returns the note for run.json (`used`, and why not or what was cached).
    make_batch(id lists) -> model inputs; plan(lengths) -> batches of row indices for the build;
    autocast: the run trains under bf16 autocast, and the states are computed under it too;
    layout: how make_batch pads a row (a row's states move with its padded width at bf16 rounding), part of the
    key, so entries built under another padding are not reused;
    scoring: those of `splits` whose scores the run records (their states kept in SCORING_STORE_DTYPE, exact)."""
    if mode == "off":
        return {"used": False, "reason": "train.prefix_cache is off"}
    if method != "lora":
        return {"used": False, "reason": f"adapter.method={method} trains every layer"}
    model_type = getattr(transformers_model(model).config, "model_type", "")
    if model_type not in SPLICE_TABLE:
        return {"used": False, "reason": f"model_type '{model_type}' is not supported by the prefix cache "
                                          f"(supported: {', '.join(SPLICE_TABLE)}); normal forward path"}
    k = first_trained_layer(model, model_type)
    if k == 0:
        return {"used": False, "reason": "the adapter (or a trained bias/embedding) touches block 0: "
                                         "nothing below it is frozen"}
    n_blocks = len(_get(_backbone(model), SPLICE_TABLE[model_type][1]))
    if k >= n_blocks:
        return {"used": False, "reason": "no block trains (head only); normal forward path"}
    splice = Splice(model, model_type, k, autocast)
    computed_in = "bf16" if autocast else "fp32"
    t0 = time.perf_counter()
    # the states depend on the frozen blocks' weights and on how they compute (activation, norm eps, rope...): the
    # config is part of the key, or a model differing only in hidden_act reused another's states
    weights = _weights_hash(splice.prefix_modules()) + _config_hash(transformers_model(model).config)
    hits, built, disk, total = 0, 0, 0, 0
    held, budget = 0, MEMORY_BUDGET_MB * 2**20  # this run's in-memory states: never past the budget
    stats = {"rows_computed": 0, "compute_s": 0.0}  # lazy rows computed by this run, and their cost
    hidden = getattr(transformers_model(model).config, "hidden_size", 0) or 0
    note: dict = {}  # the run's record of the cache, shared with its feeds (a fault met later is said there)
    feeds = []
    remove_stale_temporaries(cache_dir())  # builds killed mid-way (kill -9, a bus error) hold disk space
    for enc in splits:
        dtype = np.dtype(SCORING_STORE_DTYPE if any(enc is s for s in scoring) else STORE_DTYPE)
        key = hashlib.blake2b(f"{model_type}|{k}|{computed_in}|{dtype.name}|{weights}|"
                              f"{_ids_hash(enc.ids)}|{layout}".encode(), digest_size=16).hexdigest()
        offsets = np.zeros(len(enc.ids) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in enc.ids], out=offsets[1:])
        states = _MEMORY.get(key) or _load_disk(key, offsets, hidden, dtype)
        if states is not None:
            hits += 1
        else:
            size = int(offsets[-1]) * hidden * dtype.itemsize
            over = held + size > budget  # past LORATUNE_PREFIX_CACHE_MB in memory: to disk, or not cached
            big = size > DISK_ENTRY_MB * 2**20 or over
            if big and not _writable(cache_dir()):  # an optimisation only: a read-only cache folder is no error
                if over:
                    return _uncached(note, f"the {size / 2**20:.3g} MB entry would take this run's in-memory states "
                                           f"past LORATUNE_PREFIX_CACHE_MB={MEMORY_BUDGET_MB:g} and {cache_dir()} "
                                           f"cannot take it; raise the budget or set LORATUNE_CACHE_DIR to a "
                                           f"writable folder")
                big = False
            if big or not hidden:  # disk entries are built whole, up front, for later processes
                try:
                    if big:
                        _save_offsets(key, offsets)
                    states = build(splice, enc.ids, make_batch, plan,
                                   path=cache_dir() / f"{key}.values.npy" if big else None, dtype=dtype)
                except CacheFault as fault:
                    return _uncached(note, str(fault))
                except OSError as exc:  # a full disk (errors.disk_full), or another failure: the run goes on without
                    return _uncached(note, _write_failure(size, exc))
            else:  # lazy: each row is computed by the forward that first needs it (Feed.fill)
                states = PrefixStates(np.empty((int(offsets[-1]), hidden), dtype=dtype), offsets,
                                      ready=np.zeros(len(enc.ids), dtype=bool))
            built += 1
        _remember(key, states)
        held += states.nbytes
        disk += int(states.on_disk)
        total += int(states.values.nbytes)
        feeds.append((enc, Feed(splice, states, enc.ids, make_batch, stats, note, plan)))
    for enc, feed in feeds:  # only once every split has its states: a fault above leaves every split uncached
        enc.prefix = feed
    note.update({"used": True, "first_layer": k, "skipped_layers": k, "dtype": np.dtype(STORE_DTYPE).name,
                 "scoring_dtype": np.dtype(SCORING_STORE_DTYPE).name, "computed_in": computed_in,
                 "splits_reused": hits, "splits_built": built, "splits_on_disk": disk,
                 "mb": round(total / 2**20, 1), "setup_s": round(time.perf_counter() - t0, 3), "lazy": stats,
                 "note": "no dropout inside the frozen embeddings and blocks below first_layer; the training split's "
                         "states are held in dtype, the scored splits' (validation, train_eval) in scoring_dtype, "
                         "so the recorded scores are those loratune evaluate gives; rows not cached yet are computed "
                         "by the forward that first needs them (lazy: rows_computed, compute_s)"})
    return note
