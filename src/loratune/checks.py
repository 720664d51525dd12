"""The one list of checks `train`, `plan`, `check` and `assess task=causal-lm` run before anything loads: what
training would crash on or refuse (a split too small, a tracker's missing package, a metric the task does not compute,
the prompt set's rows, a max_length beyond the model's position embeddings). Apart from `api` so that `assess`, which
`api` calls, runs the same list (a one-row train with no validation got 'start with: loratune train ...' from assess,
and train refused it: 'validation: 0 rows')."""

from __future__ import annotations


def run_checks(cfg, dataset) -> list:
    """A UserError naming what training would refuse, for a validated cfg and its dataset. Returns the prompt set's
    items as read (a causal-lm run's; else [])."""
    from loratune.model_info import check_max_length
    from loratune.tasks import recipe
    from loratune.trackers import require as require_trackers

    recipe(cfg, "check")(dataset)
    require_trackers(cfg.train.report_to)  # a tracker's missing package: training would refuse it after loading
    items: list = []
    if cfg.model.task != "causal-lm":  # what training reads before its first step, read now (the dry run too)
        from loratune.slices import load_probe_set
        from loratune.train import objective_key

        objective_key(cfg, dataset.label_space.multi_label)  # a metric this task does not compute
        if cfg.data.probe_file:
            load_probe_set(cfg.data.probe_file, cfg.data.text_column, cfg.data.label_column)
    else:  # the prompt set's rows and the metric that picks the model, as train_sft reads them before its first step
        from loratune.sft import read_prompt_set

        items, _ = read_prompt_set(cfg, dataset)
    check_max_length(cfg, dataset)
    return items
