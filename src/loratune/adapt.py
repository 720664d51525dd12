"""Adapters: semantic target groups -> module names per architecture, peft wrapping, parameter counts.

The group table is data (one row per `model_type`), like peft's own
`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`: each row gives the prefix of the transformer
blocks (with the layer index) and, per group, the module name relative to a block. Every row is
checked against the real module names of that architecture, built from its `transformers` config on
the meta device (tests/unit/test_arch_table.py). Architectures not in the table still work with
`all-linear` and raw module names.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from loratune import library_warnings
from loratune.config import BASE_REWRITING_INITS, AdapterConfig, RunConfig, parse_layers
from loratune.errors import UserError
from loratune.heads import head_modules
from loratune.precision import full_nbytes, full_weight, under

# model_type -> block prefix regex (group 1 = layer index) and group -> module name inside a block.
_BERT_LIKE = {
    "blocks": r"^(?:.*\.)?encoder\.layer\.(\d+)\.",
    "attn.q": "attention.self.query",
    "attn.k": "attention.self.key",
    "attn.v": "attention.self.value",
    "attn.o": "attention.output.dense",
    "ffn.in": "intermediate.dense",
    "ffn.out": "output.dense",
}
_LLAMA_LIKE = {
    "blocks": r"^(?:.*\.)?layers\.(\d+)\.",
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.o": "self_attn.o_proj",
    "ffn.gate": "mlp.gate_proj",
    "ffn.in": "mlp.up_proj",
    "ffn.out": "mlp.down_proj",
}
GROUP_TABLE: dict[str, dict[str, str]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "camembert": _BERT_LIKE,
    "deberta-v2": {**_BERT_LIKE, "attn.q": "attention.self.query_proj", "attn.k": "attention.self.key_proj",
                   "attn.v": "attention.self.value_proj"},
    "mpnet": {**_BERT_LIKE, "attn.q": "attention.attn.q", "attn.k": "attention.attn.k",
              "attn.v": "attention.attn.v", "attn.o": "attention.attn.o"},
    "distilbert": {
        "blocks": r"^(?:.*\.)?transformer\.layer\.(\d+)\.",
        "attn.q": "attention.q_lin", "attn.k": "attention.k_lin", "attn.v": "attention.v_lin",
        "attn.o": "attention.out_lin", "ffn.in": "ffn.lin1", "ffn.out": "ffn.lin2",
    },
    # ALBERT shares weights across depth: num_hidden_layers applications of num_hidden_groups physical groups
    # (one, as released). A block here is a group's layer (`albert_layer_groups.G.albert_layers.L.`), indexed by
    # its group: what holds weights and takes an adapter (`depth` counts the layers run).
    "albert": {
        "blocks": r"^(?:.*\.)?encoder\.albert_layer_groups\.(\d+)\.albert_layers\.\d+\.",
        "attn.q": "attention.query", "attn.k": "attention.key", "attn.v": "attention.value",
        "attn.o": "attention.dense", "ffn.in": "ffn", "ffn.out": "ffn_output",
    },
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,  # Gemma 3's language model (plan.language_model_config reads it out of gemma3)
    # Phi-3 fuses Q, K and V into one linear layer, and the FFN gate with its up projection: each of those
    # groups names the fused module, so `attn.q` adapts Q, K and V together (and `ffn.gate` the gate and up).
    "phi3": {**_LLAMA_LIKE, "attn.q": "self_attn.qkv_proj", "attn.k": "self_attn.qkv_proj",
             "attn.v": "self_attn.qkv_proj", "ffn.gate": "mlp.gate_up_proj", "ffn.in": "mlp.gate_up_proj"},
}
# The first `<name>.<index>.` in a module name is its block: T5 nests sub-layers inside blocks
# (`encoder.block.3.layer.1.DenseReluDense.wi`), and the last one would read the sub-layer as the block.
_GENERIC_BLOCKS = r"^(?:.*?\.)?(?:layer|layers|h|blocks|block)\.(\d+)\."

# Composite names -> the groups they stand for (members missing in an architecture are skipped).
ALIASES = {
    "attn": ("attn.q", "attn.k", "attn.v", "attn.o"),
    "ffn": ("ffn.gate", "ffn.in", "ffn.out"),
}
GROUPS = ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.in", "ffn.out", "ffn.gate")

@dataclass(frozen=True)
class LinearSite:
    """One linear layer inside a transformer block."""

    name: str  # full module name
    layer: int
    relative: str  # name inside the block, e.g. attention.self.query
    in_features: int
    out_features: int


@dataclass(frozen=True)
class ParamCount:
    total: int  # every parameter of the (wrapped) model, frozen ones included
    trainable: int
    adapter: int  # what LoRA trains, head excluded: A and B, DoRA's magnitudes, trained biases (bias all, lora_only)
    head: int  # the classification head
    adapted_weights: int  # parameters of the weights that carry an adapter (or of all linear blocks, full FT)
    base: int  # parameters of the base model, head excluded (its trained biases included: they are the model's)
    # LoRA's A and B parameters per unit of rank (per_rank: sum of d_in + d_out over the adapted layers); `adapter`
    # is r times this plus what does not grow with r (trained biases, DoRA's magnitudes). 0: full fine-tuning
    per_rank: int = 0

    @property
    def share_of_total(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "share_of_total": self.share_of_total}


def _linear_sites(model, conv1d: bool = False) -> tuple[list[LinearSite], str]:
    """The nn.Linear layers inside the transformer blocks (what LoRA targets here cover). `conv1d`: transformers'
    Conv1D too (GPT-2's projections, a linear layer with its weight transposed), for what counts blocks and the
    weights a full fine-tune trains: without them a 3-layer GPT-2 was recorded as 0 layers, 0 adapted weights."""
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    model_type = getattr(model.config, "model_type", "")
    pattern = re.compile(GROUP_TABLE.get(model_type, {}).get("blocks", _GENERIC_BLOCKS))
    sites = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            shape = (mod.in_features, mod.out_features)
        elif conv1d and isinstance(mod, Conv1D):
            shape = tuple(mod.weight.shape)  # (in, out): Conv1D stores the weight transposed
        else:
            continue
        m = pattern.match(name)
        if not m:
            continue
        sites.append(LinearSite(name, int(m.group(1)), name[m.end():], *shape))
    return sites, model_type


def num_layers(model) -> int:
    """The highest block index + 1: what `layers_to_transform` counts (an encoder-decoder's two stacks share it)."""
    sites, _ = _linear_sites(model, conv1d=True)
    return 1 + max((s.layer for s in sites), default=-1)


def num_blocks(model) -> int:
    """Every transformer block, each stack's counted (BART-large: 12 encoder + 12 decoder = 24): what activation
    memory and FLOPs scale with."""
    sites, _ = _linear_sites(model, conv1d=True)
    return len({s.name[: len(s.name) - len(s.relative)] for s in sites})


def shared_depth(model) -> int | None:
    """The config's num_hidden_layers where the model reuses fewer physical blocks across them (ALBERT: 12 layers
    from 1 shared block), else None."""
    configured = getattr(model.config, "num_hidden_layers", None)
    if isinstance(configured, int) and not getattr(model.config, "is_encoder_decoder", False) \
            and 0 < num_layers(model) < configured:
        return configured
    return None


def depth(model) -> int:
    """The transformer layers a forward runs: `shared_depth` where blocks are shared across layers, else
    `num_blocks`."""
    return shared_depth(model) or num_blocks(model)


def block_of_layer(layer: int, n_layers: int, n_blocks: int) -> int:
    """The physical block that layer `layer` of `n_layers` runs, `n_blocks` shared evenly across them (ALBERT's
    AlbertTransformer: group int(i / (num_hidden_layers / num_hidden_groups)))."""
    return layer * n_blocks // n_layers


def shared_blocks_note(model) -> str | None:
    """What a layer selection means where blocks are shared across layers (run.json model.layers_note), else None."""
    layers = shared_depth(model)
    if layers is None:
        return None
    blocks = num_layers(model)
    return (f"this {model.config.model_type} model runs {layers} layers through {blocks} shared block(s): layer "
            "indices (layers_to_transform, group@...) count its layers, and a selection adapts each block one of its "
            "layers runs, so the adapter acts at every layer that block runs")


def available_targets(model) -> dict[str, list[str]]:
    """What `target_modules` may name for this model: groups (with their module) and raw names."""
    sites, model_type = _linear_sites(model)
    table = GROUP_TABLE.get(model_type, {})
    rel = sorted({s.relative for s in sites})
    groups = [g for g in GROUPS if g in table and table[g] in rel]
    composite = [a for a, members in ALIASES.items() if any(m in groups for m in members)]
    return {"groups": groups + composite + ["all-linear"], "raw": rel}


def resolve_targets(model, adapter: AdapterConfig) -> list[LinearSite]:
    """The linear layers that get an adapter, from groups / raw names and the layer selection."""
    sites, model_type = _linear_sites(model)
    configured = getattr(model.config, "num_hidden_layers", None)
    if not sites and isinstance(configured, int) and configured < 1:  # no blocks at all, not blocks of Conv1D
        raise UserError(f"num_hidden_layers must be >= 1: the config of '{model_type}' says {configured}, which builds "
                        "a model without transformer blocks", "set num_hidden_layers in its config.json to the "
                        "model's number of layers")
    if not sites:
        raise UserError(f"found no nn.Linear layers inside the transformer blocks of '{model_type}' (GPT-2's "
                        "projections, for one, are transformers' Conv1D, which LoRA targets here do not cover)",
                        "train every weight with adapter.method=full, or use a model whose blocks are built of "
                        "nn.Linear (BERT, RoBERTa, DeBERTa, Llama, Mistral, Qwen, Gemma, Phi-3...)")
    avail = available_targets(model)
    chosen, unknown = select_sites(sites, adapter.target_modules, adapter.layers_to_transform,
                                   GROUP_TABLE.get(model_type, {}), shared_depth(model))
    if unknown:
        raise UserError(
            f"adapter.target_modules: {', '.join(repr(u) for u in unknown)} match no linear layer of this "
            f"'{model_type}' model",
            f"use groups {', '.join(avail['groups'])} or raw names {', '.join(avail['raw'])}")
    return chosen


def select_sites(sites: Sequence[LinearSite], targets: Sequence[str], layers_to_transform: Any,
                 table: Mapping[str, str], shared: int | None = None) -> tuple[list[LinearSite], list[str]]:
    """resolve_targets' rule on given sites (a model's, or diagnose's from the group table for a run without its
    model): (the sites the targets select, sorted by block and name; the targets that select none). Targets are
    groups (`table`'s), composites (ALIASES), all-linear, full or raw module names, each with an optional layer
    selection (`@top:2`, else `layers_to_transform`); layers count the `shared` depth where blocks are shared
    across layers (ALBERT; adapt.shared_depth), else the blocks. A bad layer selection raises UserError."""
    n_blocks = 1 + max(s.layer for s in sites)
    # layer selections count the layers a forward runs; with shared blocks (ALBERT) each maps to the block it runs
    n_layers = shared or n_blocks
    try:
        default_layers = parse_layers(layers_to_transform, n_layers)
    except ValueError as exc:
        raise UserError(f"adapter.layers_to_transform: {exc}", f"this model has {n_layers} layers") from None
    chosen: dict[str, LinearSite] = {}
    unknown = []
    for target in targets:
        name, _, layer_spec = target.partition("@")
        try:
            layers = parse_layers(layer_spec, n_layers) if layer_spec else default_layers
        except ValueError as exc:
            raise UserError(f"adapter.target_modules '{target}': {exc}", f"this model has {n_layers} layers") from None
        blocks = None if layers is None else {block_of_layer(i, n_layers, n_blocks) for i in layers}
        if name == "all-linear":
            rels = {s.relative for s in sites}
        elif name in ALIASES:
            rels = {table[g] for g in ALIASES[name] if g in table}
        elif name in GROUPS:
            if name not in table:
                unknown.append(target)
                continue
            rels = {table[name]}
        elif any(s.name == name for s in sites):  # a full module name: exactly that module
            rels = None
        else:  # a raw module name: a block-relative name or its last part
            rels = {s.relative for s in sites if s.relative == name or s.relative.endswith("." + name)}
        matched = [s for s in sites if (s.name == name if rels is None else s.relative in rels)
                   and (blocks is None or s.layer in blocks)]
        if not matched:
            unknown.append(target)
            continue
        for s in matched:
            chosen[s.name] = s
    return sorted(chosen.values(), key=lambda s: (s.layer, s.name)), unknown


def _init_arg(choice: str):
    return {"default": True}.get(choice, choice)


# model.task -> peft's task type. A classifier trains and saves its fresh head with the adapter
# (modules_to_save); a causal LM keeps its pretrained lm_head frozen (the adapter is the whole update).
PEFT_TASK_TYPES = {"classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}


def apply_adapter(model, adapter: AdapterConfig, task: str = "classification"):
    """Wrap the model for training. LoRA: a peft model (classification: its head is trained and saved with
    the adapter). Full: every parameter trainable. Returns (model, targeted sites)."""
    if adapter.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        sites, _ = _linear_sites(model, conv1d=True)
        return model, sites
    from peft import LoraConfig, TaskType, get_peft_model

    sites = resolve_targets(model, adapter)
    heads = head_modules(model) if task == "classification" else []
    lora = LoraConfig(
        task_type=TaskType[PEFT_TASK_TYPES[task]],
        r=adapter.r,
        lora_alpha=adapter.lora_alpha,
        lora_dropout=adapter.lora_dropout,
        target_modules=[s.name for s in sites],
        bias=adapter.bias,
        use_rslora=adapter.use_rslora,
        use_dora=adapter.use_dora,
        init_lora_weights=_init_arg(adapter.init_lora_weights),
        modules_to_save=heads or None,
    )
    with library_warnings.silenced():  # peft probes deprecated transformers attributes
        peft_model = get_peft_model(model, lora)
    return peft_model, sites


FULL_WEIGHT_FILE = "model.safetensors"  # what save_pretrained writes for a full fine-tune (never a pickle)

# adapter_config.json fields a LoRA warm start must share with the run beyond the tensors' shapes (which already
# fix r, targets, layers and DoRA): lora_alpha and use_rslora set the update's scale (alpha / r or / sqrt(r)), so
# other values change what the loaded A and B compute; pissa / olora rewrite the base weights to W - BA of their
# own init, so the saved adapter only means the saved model on the base its own init left. Each maps a value to
# what it changes: default and gaussian only draw the A and B that the warm start overwrites.
WARM_START_KEYS = {
    "lora_alpha": float,
    "use_rslora": bool,
    "init_lora_weights": lambda v: v if v in BASE_REWRITING_INITS else "A/B draw only",
}


def _config_value(key: str, value):
    """An adapter_config.json / peft value as adapter.<key> spells it (peft writes init_lora_weights default
    as true)."""
    return "default" if key == "init_lora_weights" and value is True else value


def _warm_start_mismatch(model, saved: dict) -> list[tuple[str, object, object]]:
    """(key, saved, this run's) for each WARM_START_KEYS field where the saved adapter_config.json (`saved`, read) and
    the run's peft config differ in effect."""
    ours = getattr(model, "peft_config", {}).get("default")
    if ours is None:
        return []
    out = []
    for key, effect in WARM_START_KEYS.items():
        if key not in saved:  # an older peft's file: nothing to compare
            continue
        a, b = _config_value(key, saved[key]), _config_value(key, getattr(ours, key, None))
        if effect(a) != effect(b):
            out.append((key, a, b))
    return out


# What a warm start reads its weights from, by adapter.method: peft's adapter files (safetensors, or an older peft's
# pickle), or the full model's safetensors
WARM_START_WEIGHTS = {"lora": ("adapter_model.safetensors", "adapter_model.bin"), "full": (FULL_WEIGHT_FILE,)}


@contextlib.contextmanager
def _init_from_faults(path: str):
    """A file of train.init_from that does not read (a truncated safetensors, a half-written json: what a run killed
    while saving leaves) is a UserError naming it, not safetensors' or json's traceback."""
    from pathlib import Path

    from loratune.models import damaged_file

    reading: list[Path] = []  # the file being read, set by the block

    try:
        yield reading
    except UserError:
        raise
    except Exception as exc:  # SafetensorError, JSONDecodeError, UnpicklingError, OSError, ...
        bad = damaged_file(Path(path)) or (reading[-1] if reading else Path(path))
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise UserError(f"train.init_from: {bad} is unreadable ({why})",
                        "start from a complete saved folder (a run killed while saving leaves a damaged one: train "
                        "that run again), or drop train.init_from") from None


def _same_place(a: str | None, b: str | None) -> bool:
    """Two model paths (or hub ids) that name the same place once resolved."""
    from pathlib import Path

    if not a or not b:
        return True  # nothing recorded: nothing to compare
    return a == b or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def warm_start(model, cfg: RunConfig, labels: list[str] | None = None) -> str:
    """Load saved weights into a wrapped model (`train.init_from`): a LoRA adapter folder (adapter and saved head)
    into the peft model, or a full model's safetensors into every parameter. Every saved tensor must match one
    of the model's by name and shape, and every trainable one must be saved: a mismatch is a UserError naming the
    first differences (a different r, targets or layers); a LoRA adapter saved under another scale or base-rewriting
    init (WARM_START_KEYS) is one too, and so is a missing or unreadable file. `labels`: the run's labels (a
    classifier), compared with the folder's label_map.json by the rule of a base folder's own head
    (models.own_head_case): the same names in another order get the head's rows reordered, other names are refused.
    Returns a one-line note for run.json, with a warning (also on stderr) when the folder was saved on another base
    model path."""
    import json
    import sys
    from pathlib import Path

    import torch

    from loratune.data import label_form
    from loratune.models import head_projection, own_head_case, resolve_model
    from loratune.store import ADAPTER, LABEL_MAP, RUN, adapter_step, read_json

    method, path = cfg.adapter.method, cfg.train.init_from
    folder = Path(path)
    lora = method != "full"
    need = "adapter_config.json" if lora else FULL_WEIGHT_FILE
    if not (folder / need).is_file():
        what = "a LoRA adapter folder (adapter_config.json + adapter_model.safetensors)" if lora else \
            f"a full model folder ({FULL_WEIGHT_FILE})"
        raise UserError(f"train.init_from: {path} has no {need}; adapter.method={method} starts from {what}",
                        "give a run's adapter/ folder saved with the same adapter.method, or drop train.init_from")
    if folder.name == ADAPTER and (folder.parent / RUN).is_file():
        # a run's adapter/: used only as the model its run.json vouches for, as predict does (store.adapter_step); a
        # plain peft folder has no record to check against
        _, why = adapter_step(read_json(folder.parent / RUN), folder.parent)
        if why:
            raise UserError(f"train.init_from: {path} is not a model its run recorded: {why}",
                            "start from a run that saved its model (train that run again), or drop train.init_from")
    weights = next((folder / f for f in WARM_START_WEIGHTS["lora" if lora else "full"] if (folder / f).is_file()),
                   None)
    if weights is None:
        raise UserError(f"train.init_from: {path} has {need} but no weights file (none of "
                        f"{', '.join(WARM_START_WEIGHTS['lora'])}): a run killed while saving leaves such a folder",
                        "start from a complete saved folder (train that run again), or drop train.init_from")
    with _init_from_faults(path) as reading:
        reading.append(folder / need)
        config = json.loads((folder / need).read_text(encoding="utf-8")) if lora else {}
        reading.append(folder / LABEL_MAP)
        label_map = json.loads((folder / LABEL_MAP).read_text(encoding="utf-8")) \
            if (folder / LABEL_MAP).is_file() else {}
        if not isinstance(config, dict) or not isinstance(label_map, dict):
            raise ValueError("not a JSON object")
        reading.append(weights)
        if lora:
            from peft.utils import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict

            saved = load_peft_weights(str(folder), device="cpu")
            want = get_peft_model_state_dict(model)
        else:
            from safetensors.torch import load_file

            saved = load_file(str(weights), device="cpu")
            want = model.state_dict()
    rows = None
    saved_labels = label_map.get("labels")
    if labels is not None and isinstance(saved_labels, list):  # the head's row k answers saved_labels[k]
        saved_labels = [label_form(str(x)) for x in saved_labels]
        case, rows = own_head_case(saved_labels, list(labels))
        if case == "other":
            raise UserError(f"train.init_from: {path} was trained for the labels [{', '.join(saved_labels)}], this "
                            f"run's data has [{', '.join(labels)}]: its head's rows would answer other labels",
                            "start from a run trained on data with the same label names, or drop train.init_from")
        rows = rows if case == "reorder" else None
    want_shapes = {k: tuple(v.shape) for k, v in want.items()}
    extra = [k for k in saved if k not in want_shapes]
    shape = [f"{k} {tuple(saved[k].shape)} vs {want_shapes[k]}" for k in saved
             if k in want_shapes and tuple(saved[k].shape) != want_shapes[k]]
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = [k for k in want_shapes if k not in saved and (lora or k in trained)]
    if not lora and missing:  # a tied weight (lm_head = embeddings) is saved once
        ptrs = {p.data_ptr() for n, p in model.named_parameters() if n in saved}
        params = dict(model.named_parameters())
        missing = [k for k in missing if k not in params or params[k].data_ptr() not in ptrs]
    if extra or shape or missing:
        first = [*(f"shape {x}" for x in shape[:3]), *(f"not in this model: {k}" for k in extra[:3]),
                 *(f"not saved: {k}" for k in missing[:3])]
        raise UserError(f"train.init_from: the weights in {path} do not fit this run's model "
                        f"({len(shape)} shape, {len(extra)} extra, {len(missing)} missing tensor(s)): "
                        + "; ".join(first),
                        "start from weights saved with the same model and adapter.* (method, r, target_modules, "
                        "layers_to_transform, use_dora), or drop train.init_from")
    differ = _warm_start_mismatch(model, config) if lora else []
    if differ:
        raise UserError(f"train.init_from: the adapter in {path} was saved under other adapter settings, so it "
                        "would not load as the model it saved: "
                        + "; ".join(f"adapter.{k} {a} saved vs {b} in this run" for k, a, b in differ),
                        "set " + " ".join(f"adapter.{k}={a}" for k, a, _ in differ)
                        + " as saved, or drop train.init_from")
    with torch.no_grad():
        if lora:
            set_peft_model_state_dict(model, saved)
        else:
            model.load_state_dict(saved, strict=False)
        if rows is not None:  # the same labels in another order: each label keeps the row trained for it
            _, proj = head_projection(model, len(rows))
            for p in proj.parameters(recurse=False):  # weight (labels x hidden) and bias (labels): rows are labels
                p.copy_(p[rows])
    note = f"started from {path} ({len(saved)} tensors)"
    if rows is not None:
        note += f"; its head's rows reordered from its label order [{', '.join(saved_labels)}] to the data's"
    saved_base = label_map.get("base_model_path") or config.get("base_model_name_or_path")
    ours = resolve_model(cfg.model).path
    if isinstance(saved_base, str) and not _same_place(saved_base, ours):
        warning = (f"warning: saved on the base model {saved_base}, this run's is {ours} (model.name_or_path): "
                   "unless it is the same model moved, the adapter starts from a model nobody trained")
        print(f"train.init_from: {warning}", file=sys.stderr)
        note += f"; {warning}"
    return note


def count_params(model, sites: list[LinearSite], method: str) -> ParamCount:
    """Parameter counts of a wrapped model (works on the meta device too)."""
    total = trainable = adapter = head = lora = 0
    heads = head_modules(model)
    for name, p in model.named_parameters():
        n = p.numel()
        parts = name.split(".")
        is_head = under(name, heads) and "original_module" not in parts
        is_lora = ("lora_A" in parts or "lora_B" in parts or "lora_embedding_A" in parts
                   or "lora_magnitude_vector" in parts)  # DoRA's trained magnitude is part of the adapter
        if "original_module" in parts:  # peft keeps a frozen copy of the head; not part of the model proper
            continue
        total += n
        lora += n if is_lora else 0
        if p.requires_grad:
            trainable += n
            if is_lora or (method == "lora" and not is_head):
                adapter += n
        if is_head:
            head += n
    adapted = sum(s.in_features * s.out_features for s in sites)
    # the base model: neither head nor the adapter's own tensors (trained biases are the model's: bias=all trains them)
    base = total - head - (lora if method == "lora" else 0)
    return ParamCount(total, trainable, adapter, head, adapted, base, per_rank(sites) if method == "lora" else 0)


def per_rank(sites: list[LinearSite]) -> int:
    """LoRA's parameters per unit of rank on these layers: d_in + d_out each (A is r x d_in, B d_out x r; protocol
    section 6). Neither trained biases nor DoRA's magnitudes, which do not grow with r."""
    return sum(s.in_features + s.out_features for s in sites)


def lora_params(sites: list[LinearSite], r: int) -> int:
    """LoRA parameters for rank r on these layers: r * (d_in + d_out) each (protocol section 6)."""
    return r * per_rank(sites)


def record_per_rank(params: Mapping[str, Any], r: int | None) -> tuple[float | None, str]:
    """LoRA's A and B parameters per unit of rank of a run record's `params` (run.json) trained at rank r, and a note
    saying how it was had ("" when recorded). A record written before `per_rank` was: its adapter count / r, exact
    when it trained LoRA's A and B only (bias none, no DoRA: the defaults), too high when it trained biases or DoRA's
    magnitudes as well (its counts cannot tell): a breakeven rank from it is then too low. None: no count, or r <= 0."""
    own = params.get("per_rank")
    if isinstance(own, (int, float)) and not isinstance(own, bool) and own > 0:
        return float(own), ""
    adapter = params.get("adapter")
    if not isinstance(adapter, (int, float)) or isinstance(adapter, bool) or adapter <= 0 or not r or r <= 0:
        return None, ""
    return adapter / r, (f"LoRA parameters per rank taken as the record's adapter count / r = {adapter:g} / {r}: "
                         "a record written before params.per_rank; too high, and the breakeven too low, if it "
                         "trained biases (bias all or lora_only) or DoRA magnitudes")


# Evaluation runs each plain LoRA layer (peft's lora.Linear on an nn.Linear, one adapter, no DoRA, no LoRA bias) as
# one matmul with W + scaling * B @ A, where peft's unmerged forward runs the base matmul, the adapter's two thin
# ones, a scaling and an add: on MiniLM config (a) (LoRA on 16 layers) those were 13-18% of an evaluation pass on 2
# CPU cores (bench/results/throughput.md, issue 17 round 4). A layer whose B is all zero (LoRA's init: step 0) adds
# exactly zero and simply runs its base layer, so the step-0 point is bit-identical; a merged layer differs from the
# unmerged sum by float rounding only (logits within ~1e-7). The merged copies live beside the originals while
# evaluating: above this many bytes of them the adapters run unmerged (a 7B model's all-linear would need ~26 GB).
EVAL_MERGE_MAX_BYTES = 256 * 2**20


def _plain_lora_layers(model) -> list:
    """(layer, adapter name) of every peft lora.Linear that evaluation may run merged (see EVAL_MERGE_MAX_BYTES)."""
    try:
        import torch
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        return []
    out = []
    for m in model.modules():
        if not isinstance(m, LoraLinear) or not hasattr(m, "_disable_adapters") or m.disable_adapters or m.merged:
            continue
        active = [a for a in m.active_adapters if a in m.lora_A]
        if len(active) != 1 or not isinstance(m.base_layer, torch.nn.Linear) or m.fan_in_fan_out:
            continue
        a = active[0]
        if a in getattr(m, "lora_variant", {}) or getattr(m, "use_dora", {}).get(a) \
                or getattr(m, "lora_bias", {}).get(a) or m.lora_B[a].bias is not None:
            continue
        out.append((m, a))
    return out


@contextlib.contextmanager
def merged_for_eval(model):
    """Inside the block, plain LoRA layers run as their base layer: with B all zero as it is (the adapter adds
    exactly zero), otherwise with the merged weight W + scaling * B @ A (EVAL_MERGE_MAX_BYTES says why and how
    much). On leaving, each base weight is its original tensor again (swapped back, never recomputed) and the
    adapters run as before: training is untouched. Any other model passes through unchanged."""
    import torch

    zero, merge = [], []
    for m, a in _plain_lora_layers(model):
        (merge if torch.count_nonzero(m.lora_B[a].weight) else zero).append((m, a))
    if sum(full_nbytes(m.base_layer.weight) for m, _ in merge) \
            > EVAL_MERGE_MAX_BYTES:
        merge = []
    swapped, off = [], []
    try:
        with torch.no_grad():
            for m, a in merge:
                w = m.base_layer.weight
                full = full_weight(w)  # a base weight held in bf16 for training merges from its float32 original
                merged = full + m.get_delta_weight(a).to(full.dtype)
                swapped.append((w, w.data))
                w.data = merged
                off.append(m)
                m._disable_adapters = True
        for m, _ in zero:
            off.append(m)
            m._disable_adapters = True
        yield
    finally:
        for w, original in swapped:
            w.data = original
        for m in off:
            m._disable_adapters = False
