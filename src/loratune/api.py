"""The Python API: the CLI's verbs that train, read or write runs and studies (assess, train, predict, evaluate,
diagnose and compare, report, tune), each reading like a recipe (setup, work, record). `plan` here is
`loratune train --dry-run` (a config's parameter counts and planned steps); the memory and FLOPs planner of
`loratune plan MODEL` is `loratune.plan.plan_model`, and `params`, `rules` and `show` have no API verb.

    from loratune import api
    cfg = api.load_config("my.yaml", ["r=16"])
    a = api.assess(cfg)                                 # loratune assess: data profile + start config
    run = api.train(cfg)                                # loratune train
    d = api.diagnose("runs/latest")                     # loratune diagnose: d.verdict, d.findings
    api.report("runs/latest")                           # loratune report -> runs/latest/report.html
    api.predict("runs/latest", ["I lost my card"])      # loratune predict
    api.evaluate("runs/latest", split="test")           # loratune evaluate
    summary = api.tune(cfg, budget="15m")               # loratune tune

Everything but `train`, `tune`, `predict`, `evaluate` and a probing `assess` runs without torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from loratune.config import RunConfig, load_config  # noqa: F401  (re-exported)
from loratune.data import Dataset, load_dataset, prepared_apart
from loratune.store import DEFAULT_STUDY_DIR, RunStore
from loratune.tasks import TASK_RECIPES, recipe  # noqa: F401  (re-exported)


# Verbs not built for a task yet (task -> verb -> what to do instead): said as a UserError before any work,
# never a traceback half-way. Every verb is built for both tasks today.
NOT_BUILT: dict[str, dict[str, str]] = {}
# api verbs whose CLI namesake is another command (verb -> where that command is): said when a caller hands the verb
# that command's argument (api.plan('llama-2-7b') pointed at load_config alone)
OTHER_COMMAND = {"plan": "api.plan is `loratune train --dry-run`; for `loratune plan MODEL` (memory and FLOPs of a "
                         "model): loratune.plan.plan_model('llama-2-7b')"}


def require_built(cfg: RunConfig, verb: str) -> RunConfig:
    """`cfg` validated as load_config and config.replace validate it (the same build_config), for the verb to use: a
    RunConfig changed with dataclasses.replace skipped every check (adapter.r=0 failed inside peft, learning_rate='1e-3'
    inside torch's optimizer)."""
    from loratune.config import replace
    from loratune.errors import UserError

    if not isinstance(cfg, RunConfig):  # a path, a dict, None: what a Python caller may hand over
        other = f"; {OTHER_COMMAND[verb]}" if verb in OTHER_COMMAND else ""
        raise UserError(f"api.{verb} takes a RunConfig, not {type(cfg).__name__} {cfg!r:.60}",
                        f"cfg = api.load_config('my.yaml' or None, ['key=value', ...]){other}")
    cfg = replace(cfg)  # (rebuilt from its dotted keys: a ConfigError naming each bad key, values coerced as loaded)
    fix = NOT_BUILT.get(cfg.model.task, {}).get(verb)
    if fix:
        raise UserError(f"`loratune {verb}` is not built for model.task={cfg.model.task} yet", fix)
    return cfg


def _dataset(cfg: RunConfig, dataset: Any, verb: str) -> Any:
    """A caller's `dataset` as it is when it is what the task's reader returns (tasks.TASK_RECIPES), None as None (the
    verb reads cfg.data), else a UserError naming what was given (a list of rows crashed inside the loop)."""
    from loratune.errors import UserError

    kind = recipe(cfg, "dataset")
    if dataset is not None and not isinstance(dataset, kind):
        raise UserError(f"api.{verb}: dataset is a {kind.__module__}.{kind.__name__} for model.task={cfg.model.task}, "
                        f"not {type(dataset).__name__} {dataset!r:.60}",
                        "leave dataset out to read cfg.data, or pass dataset=api.prepare(cfg)")
    keys, drew = prepared_apart(dataset, cfg.data, cfg.train.seed)
    if keys:  # the record (config.yaml) and evaluate would name cfg.data
        source = dataset.prepared_from
        differ = [f"data.{k} {getattr(source, k)!r} (dataset) vs {getattr(cfg.data, k)!r} (cfg)" for k in keys]
        raise UserError(f"api.{verb}: dataset was prepared from other data than cfg.data ({'; '.join(differ)}): the "
                        "run's record would name data it did not use",
                        "pass dataset=api.prepare(cfg) for this cfg, or leave dataset out to read cfg.data")
    if drew:  # the record would name cfg's seed, and evaluate re-read a split drawn with it (rows trained on)
        raise UserError(f"api.{verb}: dataset was prepared with train.seed {dataset.prepared_seed}, cfg has "
                        f"{cfg.train.seed}: the seed drew {drew}, so the run's record would name rows it did not use",
                        "pass dataset=api.prepare(cfg) for this cfg, or leave dataset out to read cfg.data")
    return dataset


def prepare(cfg: RunConfig) -> Dataset:
    """Read the data (before any model loads): a `data.Dataset` for classification, an
    `sft_data.SFTDataset` for causal-lm."""
    cfg = require_built(cfg, "prepare")
    dataset = recipe(cfg, "prepare")(cfg.data, seed=cfg.train.seed)
    notes = dataset.notes
    if cfg.model.task != "causal-lm" and cfg.data.probe_file:  # its labels that name no class, said as validation's
        from loratune.slices import load_probe_set, probe_label_note

        probe = load_probe_set(cfg.data.probe_file, cfg.data.text_column, cfg.data.label_column)
        notes += tuple(n for n in [probe_label_note(probe, dataset.label_space.labels)] if n)
    return dataclasses.replace(dataset, notes=notes, prepared_from=cfg.data, prepared_seed=cfg.train.seed)


def check(cfg: RunConfig, dataset) -> None:
    """A UserError naming what training would crash on (empty texts, a split too small, a max_length beyond the
    model's position embeddings). `train` and `plan` (the dry run) run it themselves, before anything loads."""
    from loratune.checks import run_checks
    from loratune.errors import UserError

    cfg = require_built(cfg, "check")
    if dataset is None:
        raise UserError("api.check needs the dataset to check", "api.check(cfg, api.prepare(cfg))")
    run_checks(cfg, _dataset(cfg, dataset, "check"))


def train(cfg: RunConfig, dataset: Dataset | None = None, *, progress: bool = True) -> dict:
    """Train one run into cfg.train.output_dir; returns its run.json content."""
    from loratune.rng import rng_kept

    with rng_kept():  # the whole call, its checks and first imports too (rich draws from `random` when imported)
        return _train(cfg, dataset, progress=progress)


def _train(cfg: RunConfig, dataset: Dataset | None, *, progress: bool) -> dict:
    from loratune.checks import run_checks

    cfg = require_built(cfg, "train")
    dataset = _dataset(cfg, dataset, "train")
    dataset = dataset if dataset is not None else prepare(cfg)
    run_checks(cfg, dataset)  # what training would crash on (a max_length past the position embeddings: mid-run, after
    # the earlier run in output_dir was deleted), refused before anything is replaced
    _output_dir_note(cfg)  # an output_dir training refuses is refused now, before the model loads
    store = RunStore(cfg.train.output_dir)
    # what the run replaces is said when it is cleared (train.start_record), once the model loaded and init_from was
    # accepted: said here, a run then refused (init_from of another rank) claimed to have replaced what it left whole.
    # Set here, not in the CLI alone, so every caller hears it (README's `run = api.train(cfg)` re-run in a notebook
    # cell deleted the earlier run's model without a word); under accelerate launch rank 0 speaks (the other ranks'
    # store is sft.NoRecord)
    store.say_replaced = True
    return recipe(cfg, "train")(cfg, dataset, store, progress=progress)


def _output_dir_note(cfg: RunConfig) -> str | None:
    """What a run into cfg.train.output_dir replaces (store.earlier_run_note), None where nothing; an output_dir the
    run would refuse is refused here, as RunStore.create refuses it (store.check_output_dir: a file, not writable, a
    tune study's folder) and as its earlier outputs are read (files no loratune run wrote). api.train and api.plan
    ask it before the model loads, so the dry run refuses what the run refuses."""
    from loratune.store import check_output_dir, earlier_run_note

    check_output_dir(Path(cfg.train.output_dir).expanduser())
    return earlier_run_note(cfg.train.output_dir)


def _check_init_from(cfg: RunConfig, model, labels: list[str] | None = None) -> None:
    """train.init_from loaded as training loads it (adapt.warm_start): a folder that training would refuse (no
    adapter, another r, targets or labels, a damaged file) is refused by the dry run too."""
    if cfg.train.init_from:
        from loratune.adapt import warm_start

        warm_start(model, cfg, labels)


def plan(cfg: RunConfig, dataset: Dataset | None = None) -> dict:
    """What a run would do, without training (`loratune train --dry-run`): resolved targets, parameter counts, planned
    steps; what training would refuse (`check`) is refused here too."""
    from loratune.adapt import apply_adapter, count_params
    from loratune.checks import run_checks
    from loratune.models import load_classifier
    from loratune.train import eval_rows_per_point, examples_planned, plan_steps

    cfg = require_built(cfg, "plan")
    dataset = _dataset(cfg, dataset, "plan")
    dataset = dataset if dataset is not None else prepare(cfg)
    items = run_checks(cfg, dataset)  # the dry run refuses what training would (README: in --dry-run as in training)
    replaced = _output_dir_note(cfg)  # an output_dir training refuses: refused, as api.train does
    # what the run would replace, said as the run says it (train.start_record), the dry run replacing nothing
    notes = list(dataset.notes) + ([f"{replaced} (when it trains: the dry run leaves it whole)"] if replaced else [])
    if cfg.model.task == "causal-lm":
        from loratune.models import load_causal_lm, load_tokenizer
        from loratune.sft import cap_note, encode_run

        tokenizer = load_tokenizer(cfg.model)
        model, sites = apply_adapter(load_causal_lm(cfg.model, tokenizer.pad_token_id), cfg.adapter, task="causal-lm")
        _check_init_from(cfg, model)
        enc = encode_run(cfg, dataset, tokenizer, items)
        sched = enc.schedule(cfg, len(dataset.train))  # as train_sft plans
        return {"params": count_params(model, sites, cfg.adapter.method).to_dict(),  # it (in one process)
                "adapted_modules": [s.name for s in sites] if cfg.adapter.method == "lora" else [],
                "steps": sched.steps, "eval_every": sched.eval_every, "loss_every": sched.loss_every,
                "examples": examples_planned(cfg, len(dataset.train), sched.steps),
                "rows": {k: len(v) for k, v in dataset.splits().items()}, "task": "causal-lm",
                "labels": None, "multi_label": False,
                "notes": notes + enc.notes() + [n for n in [cap_note(enc.long_references, len(items),
                                                                     cfg.train.max_new_tokens)] if n]}
    space = dataset.label_space
    model = load_classifier(cfg.model, len(space), space.multi_label, dict(enumerate(space.labels)))  # as trained
    model, sites = apply_adapter(model, cfg.adapter)
    _check_init_from(cfg, model, list(space.labels))
    step0_rows, eval_rows = eval_rows_per_point(len(dataset.validation),  # as train.py scores
                                                min(cfg.train.train_eval_size, len(dataset.train)))
    steps, every = plan_steps(cfg, len(dataset.train), eval_rows, step0_rows)
    return {
        "params": count_params(model, sites, cfg.adapter.method).to_dict(),
        "adapted_modules": [s.name for s in sites] if cfg.adapter.method == "lora" else [],
        "steps": steps, "eval_every": every,
        "examples": examples_planned(cfg, len(dataset.train), steps),  # as the loop deals its batches
        "rows": {k: len(v) for k, v in dataset.splits().items()},
        "labels": len(space), "multi_label": space.multi_label, "notes": notes,
    }


def _path(value: Any, what: str, thing: str = "folder") -> str | Path:
    """A run or study folder argument (a str or a Path, `~` expanded), else a UserError naming what was given.
    `thing`: what the path names (report's `out` is a file)."""
    from loratune.errors import UserError

    if not isinstance(value, (str, Path)) or not str(value):
        raise UserError(f"{what}: a {thing} path (str or Path), not {type(value).__name__} {value!r:.60}",
                        f"give the {thing} as a string or a pathlib.Path")
    # `~/runs/x` is under the home folder, as the config's paths are (a str stays a str: `NOTEBOOK.ipynb#N`)
    return os.path.expanduser(value) if isinstance(value, str) else value.expanduser()


def _texts(texts: Any) -> list[str]:
    """predict's `texts` as a list: a str is one text (not its characters); a list, tuple, Series or array of texts
    as it is. A DataFrame or a dict is refused (their iteration gives column names and keys, each of which passes as a
    text), and so are None and bytes (read byte by byte: numbers): which column holds the texts is the caller's."""
    from collections.abc import Iterable

    from loratune.errors import UserError

    if isinstance(texts, str):
        return [texts]
    if (texts is None or isinstance(texts, (bytes, bytearray, Mapping)) or hasattr(texts, "columns")
            or not isinstance(texts, Iterable)):
        raise UserError(f"texts: a string or a list of strings, not {type(texts).__name__} {texts!r:.60}",
                        "give the texts as a list of strings, e.g. df['text'].tolist() for a DataFrame's column "
                        "(bytes: b.decode('utf-8'))")
    return list(texts)


def predict(run_dir: str | Path, texts: list[str] | str, top_k: int = 1) -> list[dict]:
    """Labels for `texts` (a list of strings; one string is one text) from a trained run."""
    return [p for chunk in predict_chunks(run_dir, texts, top_k) for p in chunk]


def predict_chunks(run_dir: str | Path, texts: list[str] | str, top_k: int = 1) -> Iterator[list[dict]]:
    """`predict`'s results a chunk of texts at a time, in order (inference.PREDICT_CHUNK_ROWS): for long inputs, memory
    bounded by a chunk and results to write as they come. Bad arguments (a text that is no string, empty, or holds a
    lone surrogate or bytes that were no UTF-8) and a run that cannot load are refused here, before the first chunk:
    the one check of `loratune predict`'s texts too."""
    from loratune.config import whole_option
    from loratune.data import check_characters, check_undecoded, has_visible
    from loratune.errors import UserError
    from loratune.inference import load_trained

    texts = _texts(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise UserError(f"texts[{bad}] is {type(texts[bad]).__name__} {texts[bad]!r:.60}, not a string",
                        "give a list of strings")
    empty = [i + 1 for i, t in enumerate(texts) if not has_visible(t)]  # training's test (data.has_visible)
    if empty:  # as training refuses an empty text: there is nothing in it to classify
        more = f" ({len(empty)} are)" if len(empty) > 1 else ""
        raise UserError(f"text {empty[0]} of {len(texts)} is empty{more}", "give texts with words in them")
    for n, text in enumerate(texts, start=1):  # what the tokenizer would fail on (a TypeError from deep inside it)
        check_undecoded(text, f"text {n} of {len(texts)}")  # bytes that were no UTF-8 (a command-line argument)
        check_characters(text, f"text {n} of {len(texts)}")  # a lone surrogate (JSON's cut "\ud83d")
    top_k = whole_option("top_k", top_k)  # an int or a numpy integer, as the CLI's --top-k
    return load_trained(_path(run_dir, "run_dir")).predict_chunks(texts, top_k=top_k)


def evaluate(run_dir: str | Path, split: str = "test") -> dict:
    from loratune.errors import UserError
    from loratune.inference import SPLIT_NAMES, evaluate_run

    if not isinstance(split, str):
        raise UserError(f"split: one of {', '.join(SPLIT_NAMES)}, not {split!r}", "e.g. split='test'")
    return evaluate_run(_path(run_dir, "run_dir"), split)


def assess(cfg: RunConfig, *, probe: bool = True, dataset: Dataset | None = None,
           thresholds: Mapping[str, float] | None = None, cache_dir: str | Path | bool | None = None):
    """Profile the data before training and propose the start config (`loratune assess`): an
    `assess.Assessment` (`.findings`, `.recommendation`, `.to_dict()`); for task causal-lm the same as plain
    data (`assess.sft.assess_sft`: facts, findings, recommendation). `thresholds`: overrides by name, as a
    `--thresholds` file's (`loratune rules`: the assess table's apply). `cache_dir`: the probe's embedding cache
    (`--cache-dir`; None: $LORATUNE_CACHE_DIR or ~/.cache/loratune; False or 'none': no cache)."""
    from loratune.assess import run_assessment
    from loratune.thresholds import assess_thresholds

    cfg = require_built(cfg, "assess")
    dataset = _dataset(cfg, dataset, "assess")
    table = assess_thresholds(_thresholds(thresholds))  # checked before any data or model loads, as the CLI's file
    if cache_dir is not None and cache_dir is not False:
        cache_dir = _path(cache_dir, "cache_dir")
    if cfg.model.task == "causal-lm":
        from loratune.assess.sft import assess_sft

        return assess_sft(cfg, dataset if dataset is not None else prepare(cfg), thresholds=table)
    return run_assessment(cfg, probe=probe, dataset=dataset, thresholds=table, cache_dir=cache_dir)


def diagnose(run: str | Path, *, thresholds: Mapping[str, float] | None = None):
    """The verdict of one run's curves with its evidence and next knob move (`loratune diagnose RUN`): a
    `diagnose.Diagnosis` (`.verdict`, `.primary`, `.findings`). RUN: a run directory, a Trainer output
    directory or trainer_state.json, a TensorBoard log, a notebook (.ipynb), or a CSV. `thresholds`: overrides by
    name (`loratune rules`)."""
    from loratune.diagnose import diagnose as _diagnose
    from loratune.errors import UserError

    if isinstance(run, (list, tuple)):
        raise UserError("api.diagnose reads one run; several runs are compared", "api.compare([run_a, run_b, ...])")
    return _diagnose(_run(run, "run"), thresholds=_thresholds(thresholds))


def _thresholds(thresholds: Any) -> Mapping[str, float] | None:
    """diagnose's and compare's `thresholds`: None or a mapping, else a UserError."""
    from loratune.errors import UserError

    if thresholds is not None and not isinstance(thresholds, Mapping):
        raise UserError(f"thresholds: a mapping of rule threshold names to values, not {thresholds!r:.60}",
                        "e.g. thresholds={'val_loss_rise_min': 0.15} (names from `loratune rules`)")
    return thresholds


def _run(run: Any, what: str):
    """One run to diagnose: a RunHistory as it is, else a folder or file path (`_path`)."""
    from loratune.history_io import RunHistory

    return run if isinstance(run, RunHistory) else _path(run, what)


def compare(runs: Sequence[str | Path], *, thresholds: Mapping[str, float] | None = None):
    """What two or more runs that differ in one knob say together (`loratune diagnose RUN RUN ...`)."""
    from collections.abc import Iterable

    from loratune.diagnose import compare as _compare
    from loratune.errors import UserError

    fix = "give a list of run folders that differ in one knob, e.g. compare([run_a, run_b])"
    if isinstance(runs, (str, Path, bytes)) or not isinstance(runs, Iterable):
        raise UserError(f"compare needs two or more runs, got {type(runs).__name__} {runs!r:.60}", fix)
    runs = list(runs)  # once: a generator read twice is empty the second time
    if len(runs) < 2:
        raise UserError(f"compare needs two or more runs, got {len(runs)}: {runs!r:.60}", fix)
    runs = [_run(r, f"runs[{i}]") for i, r in enumerate(runs)]
    return _compare(runs, thresholds=_thresholds(thresholds))


def report(path: str | Path, out: str | Path | None = None, *, examples: bool = True) -> Path:
    """Write the HTML report of a run or a study (`loratune report`); returns the file (default <path>/report.html;
    `out` a folder: its report.html). As `report -o`, an existing file is replaced only when it is a report, never the
    run's own record nor what the report reads (report.report_output)."""
    from loratune.report import write_report

    # checked as `path` is (out=5 was pathlib's TypeError); None or '' is the default, <path>/report.html
    out = Path(_path(out, "out", "file")) if out is not None and out != "" else None
    return write_report(_path(path, "path"), out, examples=examples)


def tune(cfg: RunConfig, *, budget: str | None = None, strategy: str | None = None,
         study_dir: str | Path = DEFAULT_STUDY_DIR, resume: bool = False, fixed: Sequence[str] = (),
         target: float | None = None, full_probe: bool = True, dataset: Dataset | None = None,
         arms: Sequence[str] = (), **options: Any) -> dict:
    """The tuning autopilot (`loratune tune`); returns the study summary (final/study.json).

    fixed: dotted keys whose values in `cfg` win over what the assessment proposes (the CLI fixes the
    keys given on its command line). arms: variants the protocol also tries and the samplers draw, each at
    its own lr (`loratune.moves.ARMS`: loraplus, dora; `tune --arms`). `cfg.train.output_dir` is not read (the cfg
    api.train took serves): the trials are runs in study_dir/trials/, the pick's export in study_dir/final/. resume: continue the study in study_dir on
    its own config and data; a cfg that sets a key (away from its default, or named in `fixed`) to another value than
    the study's, or a `dataset` of other data, is refused as `tune --resume key=value` / `--data DIR` is. Other
    `search.tune.TuneOptions` fields pass through `options`."""
    from loratune.rng import rng_kept

    with rng_kept():  # as api.train, the whole call: phase 0 and the finish draw from torch's generator too, not
        # only the trials, and the first call's imports from `random`
        return _tune(cfg, budget=budget, strategy=strategy, study_dir=study_dir, resume=resume, fixed=fixed,
                     target=target, full_probe=full_probe, dataset=dataset, arms=arms, **options)


def _tune(cfg: RunConfig, *, budget: str | None, strategy: str | None, study_dir: str | Path, resume: bool,
          fixed: Sequence[str], target: float | None, full_probe: bool, dataset: Dataset | None,
          arms: Sequence[str], **options: Any) -> dict:
    cfg = require_built(cfg, "tune")
    dataset = _dataset(cfg, dataset, "tune")
    from loratune.config import changed_keys, resolve_key, to_dict
    from loratune.search.protocol.settings import user_settings
    from loratune.search.tune import TuneOptions, tune as run_tune
    from collections.abc import Iterable

    from loratune.errors import UserError

    lists = {}
    for name, names in (("fixed", fixed), ("arms", arms)):  # a str would be read one character at a time
        if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
            raise UserError(f"fixed and arms: lists of names, not {type(names).__name__} {names!r:.60} ({name})",
                            "e.g. fixed=['r'], arms=['dora'] (or leave them out)")
        lists[name] = tuple(names)  # (once: a generator read twice is empty the second time)
        bad = next((x for x in lists[name] if not isinstance(x, str)), None)
        if bad is not None:  # fixed=[1] was a TypeError from inside resolve_key
            raise UserError(f"fixed and arms: lists of names, not one holding {type(bad).__name__} {bad!r:.60} "
                            f"({name})", "e.g. fixed=['r'], arms=['dora'] (or leave them out)")
    fixed, arms = lists["fixed"], lists["arms"]
    study_dir = _path(study_dir, "study_dir")  # None was a study in a folder named 'None'
    if "thresholds" in options:  # checked as diagnose's and compare's are; their names and values by search.tune
        options["thresholds"] = _thresholds(options["thresholds"])
    set_here = {"budget", "strategy", "study_dir", "resume", "explicit_keys", "user_point", "settings"}
    passable = sorted(f.name for f in dataclasses.fields(TuneOptions) if f.name not in set_here)
    unknown = sorted(set(options) - set(passable))
    if unknown:  # TuneOptions' own TypeError named neither what it takes nor where it came from
        named = sorted(set(inspect.signature(tune).parameters) - {"cfg", "options"})
        raise UserError(f"api.tune got unknown keyword argument(s) {', '.join(map(repr, unknown))}",
                        f"its keywords: {', '.join(named)}; TuneOptions fields: {', '.join(passable)}")
    keys = tuple(sorted(resolve_key(k) for k in fixed))
    flat = {f"{s}.{k}": v for s, sec in to_dict(cfg).items() for k, v in sec.items()}
    given = {k: flat[k] for k in keys}
    if resume:  # the keys cfg sets (away from their defaults, as a command line names its keys) and `fixed` are
        # compared with the study's own config as `tune --resume key=value` / `--data` are (search.tune._refuse_changes):
        # a cfg with other data or another model was silently replaced by the study's
        given.update({k: flat[k] for k in changed_keys(cfg, flat)})
    opts = TuneOptions(budget=budget, strategy=strategy, study_dir=str(study_dir), resume=resume,
                       explicit_keys=keys, user_point=given,
                       settings=user_settings(target=target, full_probe=full_probe, arms=arms), **options)
    return run_tune(cfg, opts, dataset=dataset)
