"""The assessment as two verbs: `assess_dataset` (pure: no model, token lengths, model facts and the
probe are passed in) and `run_assessment(cfg)` (loads the data, tokenises, runs the probe, then
`assess_dataset`)."""

from __future__ import annotations

import time
import typing
from pathlib import Path
from typing import Callable, Mapping, Sequence

from loratune.assess.facts import compute_facts
from loratune.assess.profile import (TextPool, char_neighbours, find_conflicts, find_noise, measure_shift,
                                     neighbour_sample_note, profile_split)
from loratune.assess.records import AssessThresholds, Assessment
from loratune.assess.rules import evaluate_findings, recommend
from loratune.assess.stats import estimate_resolution
from loratune.data import Dataset

if typing.TYPE_CHECKING:  # pragma: no cover
    from loratune.config import RunConfig
    from loratune.difficulty import ProbeResult
    from loratune.model_info import ModelInfo

def assess_dataset(ds: Dataset, *, dataset_name: str = "", model_name: str = "",
                   token_lengths: Mapping[str, Sequence[int]] | None = None,
                   unk_tokens: Mapping[str, int] | None = None, max_length: int | None = None,
                   model_info: ModelInfo | None = None, probe: ProbeResult | None = None,
                   thresholds: AssessThresholds = AssessThresholds(),
                   timings: Mapping[str, float] | None = None, use_rslora: bool = False) -> Assessment:
    """Profile a loaded dataset. No model needed: pass token lengths, model facts and the probe if known.
    use_rslora: the run's adapter.use_rslora (the start alpha is s x sqrt(r) under it, s x r without)."""
    timings = dict(timings or {})
    t0 = time.perf_counter()
    splits = ds.splits()
    tl = token_lengths or {}
    unk = unk_tokens or {}
    profiles = {name: profile_split(sp, thresholds=thresholds, token_lengths=tl.get(name), max_length=max_length,
                                    unk_tokens=unk.get(name), label_space=ds.label_space.labels)
                for name, sp in splits.items()}
    timings["profile_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pool = TextPool.of(splits)
    uniq = list(pool.by_norm)
    neighbours = char_neighbours(uniq, thresholds.near_duplicate_neighbors,
                                 min(thresholds.near_duplicate_similarity, thresholds.near_leak_similarity))
    conflicts = find_conflicts(pool, thresholds, neighbours, uniq)
    noise = find_noise(splits, pool, thresholds, neighbours, uniq)
    timings["consistency_s"] = time.perf_counter() - t0
    notes = tuple(ds.notes) + tuple(n for n in [neighbour_sample_note(len(uniq))] if n)  # counts from a sample

    t0 = time.perf_counter()
    shifts = {name: measure_shift(ds.train, sp, train_lengths=tl.get("train"), other_lengths=tl.get(name),
                                  alpha=thresholds.shift_alpha)
              for name, sp in splits.items() if name != "train"}
    timings["shift_s"] = time.perf_counter() - t0

    resolution = estimate_resolution(ds.validation, accuracy=probe.accuracy if probe else None,
                                     bootstrap_se=probe.macro_f1_se if probe else None,
                                     labels=ds.label_space.labels)
    facts = compute_facts(ds, profiles, conflicts, noise, shifts, resolution, max_length=max_length,
                          model_info=model_info, probe=probe, thresholds=thresholds, use_rslora=use_rslora)
    rec = recommend(facts)
    findings = evaluate_findings(facts, thresholds)
    return Assessment(
        dataset=dataset_name, model=model_name, multi_label=ds.label_space.multi_label,
        labels=ds.label_space.labels, splits=tuple(profiles.values()), conflicts=conflicts, noise=noise,
        shift=tuple(shifts.values()), probe=probe, model_info=model_info, resolution=resolution, facts=facts,
        recommendation=rec, findings=findings, notes=notes, timings=timings, thresholds=thresholds,
    )


NO_CACHE = "none"  # `assess --cache-dir none`, api.assess(cache_dir='none'): no probe embedding cache (as False)


def run_assessment(cfg: RunConfig, *, probe: bool = True, cache_dir: str | Path | None = None,
                   thresholds: AssessThresholds = AssessThresholds(), dataset: Dataset | None = None,
                   progress: Callable[[str], None] | None = None, checked: bool = False) -> Assessment:
    """Load the data the config names, tokenise it, run the difficulty probe, and assess.

    cache_dir: where probe embeddings are cached (None: $LORATUNE_CACHE_DIR or ~/.cache/loratune;
    False or 'none': no cache, as `assess --cache-dir none`). checked: the caller ran checks.run_checks on cfg and
    dataset (tune), so they are not run twice.
    """
    from loratune.data import load_dataset
    from loratune.difficulty import run_probe
    from loratune.checks import run_checks
    from loratune.model_info import describe_model
    from loratune.tokens import load_tokenizer_quiet, token_lengths

    say = progress or (lambda msg: None)
    if isinstance(cache_dir, str) and cache_dir.lower() == NO_CACHE:
        cache_dir = False
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    if dataset is None:
        say("loading data")
        dataset = load_dataset(cfg.data, seed=cfg.train.seed)
    timings["load_data_s"] = time.perf_counter() - t0
    # what train refuses is refused here, by train's one list of checks (checks.run_checks): a max_length past the
    # model's positions (profiled at it, every text read "0% truncated" at 512 on a 64-position model, and the probe's
    # embedding failed with an IndexError traceback), a split too small (two rows, two labels, no validation: assess
    # said 'start with: loratune train ...' where train --dry-run refused 'validation: 0 rows')
    if not checked:
        run_checks(cfg, dataset)

    t0 = time.perf_counter()
    say("tokenising")
    info = describe_model(cfg.model)
    lengths, unks = {}, {}
    tok = load_tokenizer_quiet(cfg.model)
    for name, sp in dataset.splits().items():
        lengths[name], unks[name] = token_lengths(tok, sp.texts)
    timings["tokenise_s"] = time.perf_counter() - t0

    result = None
    if probe:
        t0 = time.perf_counter()
        say("probing the frozen encoder")
        result = run_probe(cfg.model, dataset, cache_dir=cache_dir, seed=cfg.train.seed,
                                     num_threads=cfg.train.num_threads, tokenizer=tok)
        timings["probe_s"] = time.perf_counter() - t0
    say("profiling")
    a = assess_dataset(dataset, dataset_name=cfg.data.train_file or cfg.data.dataset_name or "",
                       model_name=cfg.model.name_or_path, token_lengths=lengths, unk_tokens=unks,
                       max_length=cfg.model.max_length, model_info=info, probe=result,
                       thresholds=thresholds, timings=timings, use_rslora=bool(cfg.adapter.use_rslora))
    timings = dict(a.timings)
    timings["total_s"] = time.perf_counter() - t_all
    return _replace(a, timings=timings)


def _replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)
