"""The classification head of a transformers model: which modules it is (`head_modules`), the one answer training,
saving (peft modules_to_save), parameter counts, precision and the loaders read. Apart from `loratune.adapt`, which
builds adapters on top of it, because the model loaders (`loratune.models`) need it too and adapt needs them."""

from __future__ import annotations

# The classification head, trained and saved with every adapter (peft modules_to_save), is every module the
# classifier class adds on top of its base model (what a base checkpoint lacks: BERT's `classifier`, DistilBERT's
# `pre_classifier` and `classifier`, ModernBERT's `head` and `classifier`, Llama's `score`), plus the base model's
# own children named here. BERT-family heads start at the pooler (dense + tanh over [CLS]); all-MiniLM-L6-v2's
# pooler was never trained for classification, and freezing it cost 0.21 val macro-F1 on the BANKING77 demo at
# 150 steps.
BASE_HEAD_PARTS = ("pooler",)
# Model types whose classifier builds the base model with its pooler but never calls it (BigBird's classification
# head takes token 0 of the last hidden state itself): the pooler gets no gradient, so it is no part of the head (it
# was counted as trainable, saved unchanged in every adapter, and would trip DDP's unused-parameter check). Found by a
# backward pass over 30 classifier architectures of transformers 5.23: BigBird the only one.
UNUSED_BASE_PARTS = {"big_bird": ("pooler",)}
# A model without a base model (no `base_model_prefix` child): its head is found by these last name parts.
HEAD_NAMES = ("classifier", "score", "pooler")
# The output projection to the vocabulary: in float32 under bf16 autocast, so the logits and the loss over
# the whole vocabulary keep full precision (as the classification head does in train.py).
LM_HEAD_NAMES = ("lm_head", "embed_out")  # Llama-style and GPT-NeoX names


def transformers_model(model):
    """The transformers model inside a peft wrapper (`get_base_model`), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_modules(model) -> list[str]:
    """The classification head: module paths inside the transformers model (`transformers_model`), e.g.
    ['bert.pooler', 'classifier']. Every name test of "is this the head" goes through `precision.under` with these
    paths, so training, saving (modules_to_save), parameter counts and precision agree on one head."""
    model = transformers_model(model)
    lm_head = getattr(model, "get_output_embeddings", None)
    if callable(lm_head) and lm_head() is not None:
        return []  # a language model: its output layer is the LM head (LM_HEAD_NAMES), no classification head
    prefix = getattr(model, "base_model_prefix", "") or ""
    base = getattr(model, prefix, None) if prefix else None
    if base is None or base is model or not hasattr(base, "named_children"):
        found = {n: n.split(".")[-1] for n, _ in model.named_modules() if n}
        outer = [n for n, last in found.items() if last in HEAD_NAMES]
        return [n for n in outer if not any(n.startswith(o + ".") for o in outer)]

    def has_params(mod) -> bool:
        return any(True for _ in mod.parameters())

    heads = [name for name, child in model.named_children() if child is not base and has_params(child)]
    unused = UNUSED_BASE_PARTS.get(getattr(getattr(model, "config", None), "model_type", None), ())
    heads += [f"{prefix}.{name}" for name, child in base.named_children()
              if name in BASE_HEAD_PARTS and name not in unused and has_params(child)]
    return sorted(heads)
