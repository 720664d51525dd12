"""A hub id while the hub cannot be reached: one clear error at once (the hub client would retry each file 5 times,
over a minute), the cache when the id is in it; the check is models.hub_offline_reason, which plan shares."""

from __future__ import annotations

import socket

import pytest

from loratune import models
from loratune.config import ModelConfig
from loratune.errors import UserError

HUB_ID = "someorg/some-model"


@pytest.fixture
def no_dns(monkeypatch):
    """No network: the hub's host does not resolve (HF_HUB_OFFLINE unset), and any hub load is recorded."""
    import transformers

    def unresolved(host, *a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", unresolved)
    calls = []
    for auto in ("AutoTokenizer", "AutoConfig", "AutoModel", "AutoModelForSequenceClassification",
                 "AutoModelForCausalLM"):
        monkeypatch.setattr(getattr(transformers, auto), "from_pretrained",
                            lambda *a, _auto=auto, **k: calls.append((_auto, a, k)) or pytest.fail("hub load"))
    return calls


@pytest.mark.parametrize("load", [
    lambda cfg: models.load_tokenizer(cfg),
    lambda cfg: models.load_classifier(cfg, 3, False, pad_token_id=0),
    lambda cfg: models.load_causal_lm(cfg, pad_token_id=0),
    lambda cfg: models.load_model_config(cfg),
    lambda cfg: models.load_encoder(cfg),
    lambda cfg: models.load_meta_model(HUB_ID),
])
def test_an_uncached_hub_id_offline_fails_at_once_naming_the_cause(no_dns, load):
    with pytest.raises(UserError) as err:
        load(ModelConfig(name_or_path=HUB_ID))
    assert "huggingface.co does not resolve" in err.value.problem and HUB_ID in err.value.problem
    assert "download it and give the local folder" in err.value.fix
    assert no_dns == []  # no hub load was tried (each one retries)


def test_train_dry_run_with_an_unreachable_hub_id_exits_2_without_a_hub_load(no_dns, tmp_path, capsys):
    from loratune.cli import main

    assert main(["train", "--dry-run", f"model.name_or_path={HUB_ID}", f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "does not resolve" in err and "Traceback" not in err and no_dns == []


def test_a_cached_hub_id_offline_loads_from_the_cache_only(no_dns, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, **k: f"/cache/{repo}/{name}")
    assert models.hub_kwargs(models.ModelSource(HUB_ID, None, False)) == {"local_files_only": True}


def test_online_and_local_sources_need_no_extra_arguments(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [])
    assert models.hub_kwargs(models.ModelSource(HUB_ID, None, False)) == {}
    assert models.hub_kwargs(models.ModelSource(str(tmp_path), None, True)) == {}
    assert models.hub_offline_reason() is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_offline_reason() == "offline mode: HF_HUB_OFFLINE is set"
