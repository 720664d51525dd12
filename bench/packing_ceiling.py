"""What sequence packing could save on the SFT path (issue 17's "sequence packing for decoders" lever), measured
before building it: the share of padding tokens in the batches train_sft runs, length-grouped (the default,
train.length_grouped_batches) and not, on the embedded instruction data and on BANKING77 as generation.

    python bench/packing_ceiling.py

Packing rows into full max_length sequences removes the padding and nothing else (every real token is still
computed, and each packed row attends over max_length positions instead of its batch's longest), so the padding
share of the batches is the most it can save in token compute.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from loratune import api
from loratune.models import load_tokenizer
from loratune.sft_data import Renderer, encode_sft, load_sft_dataset
from loratune.train import batch_order

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
EPOCHS = 3  # epochs of batches drawn per setting (the shuffles differ per epoch)


def padding_share(lengths: np.ndarray, batch_size: int, grouped: bool, seed: int) -> float:
    rng = random.Random(seed)
    total = padding = 0
    for _ in range(EPOCHS):
        for rows in batch_order(lengths, batch_size, rng, grouped):
            longest = int(max(lengths[i] for i in rows))
            total += longest * len(rows)
            padding += longest * len(rows) - int(sum(lengths[i] for i in rows))
    return padding / total


def main() -> None:
    for name, overrides in (("instructions (embedded demo)", ["task=causal-lm"]),
                            ("BANKING77 as generation", ["task=causal-lm", f"dataset_name={DATA}",
                                                         "label_format=generate"])):
        cfg = api.load_config(None, overrides)
        dataset = load_sft_dataset(cfg.data, cfg.train.seed)
        tok = load_tokenizer(cfg.model)
        enc = encode_sft(tok, Renderer.for_tokenizer(tok, cfg.data.chat_template), dataset.train.examples,
                         cfg.model.max_length)
        bs = cfg.train.per_device_train_batch_size
        print(f"{name}: {len(enc)} rows, mean {enc.lengths.mean():.1f} tokens (max_length {cfg.model.max_length}), "
              f"batch {bs}: padding {padding_share(enc.lengths, bs, True, cfg.train.seed):.1%} of the tokens "
              f"length-grouped, {padding_share(enc.lengths, bs, False, cfg.train.seed):.1%} not")


if __name__ == "__main__":
    main()
