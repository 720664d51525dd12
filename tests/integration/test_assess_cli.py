"""`loratune assess` end to end on a tiny crafted dataset: JSON, summary, probe with cache, exit 2."""

from __future__ import annotations

import json
import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from loratune.cli import main  # noqa: E402

TEMPLATES = {
    "weather": ("what is the weather in {} {}", ["paris", "london", "tokyo", "berlin", "madrid", "oslo", "rome",
                                                 "vienna"], ["today", "tomorrow", "tonight", "monday", "friday"]),
    "music": ("play some {} songs by {}", ["jazz", "rock", "folk", "blues", "soul", "punk"],
              ["adele", "queen", "prince", "bjork", "drake", "sting", "abba"]),
    "alarm": ("wake me up at {} {} please", ["six", "seven", "eight", "nine", "ten", "noon", "five", "four"],
              ["sharp", "exactly", "tomorrow", "daily", "again"]),
}


def write_dataset(folder, plant: bool = True):
    rng = random.Random(0)
    train, val = [], []
    for label, (tpl, xs, ys) in TEMPLATES.items():
        texts = [tpl.format(x, y) for x in xs for y in ys]
        rng.shuffle(texts)
        train += [{"text": t, "label": label} for t in texts[:30]]
        val += [{"text": t, "label": label} for t in texts[30:40]]
    if plant:
        train.append({"text": "What is the weather in Paris, TODAY?", "label": "music"})  # conflict
        val.append(dict(train[0]))  # leakage
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("validation", val)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


@pytest.fixture
def data(tmp_path):
    return write_dataset(tmp_path / "data")


def test_json_without_probe(data, tmp_path, capsys):
    out_file = tmp_path / "out" / "assess.json"
    rc = main(["assess", f"data.dataset_name={data}", "--no-probe", "--json", "--out", str(out_file)])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["probe"] is None and d["labels"] == ["alarm", "music", "weather"]
    found = {f["id"] for f in d["findings"]}
    assert {"label-conflict-exact", "leakage"} <= found
    train = next(s for s in d["splits"] if s["name"] == "train")
    assert train["rows"] == 91 and train["tokens"]["max"] > 5  # MiniLM tokenizer, special tokens included
    rec = d["recommendation"]
    assert rec["overrides"]["adapter.r"] == 8 and rec["overrides"]["model.max_length"] >= 16
    assert json.loads(out_file.read_text()) == d


def test_out_never_replaces_the_data_a_record_or_a_file_that_is_no_assessment(data, tmp_path, capsys):
    # --out overwrote anything: the training data (the next assess failed on it) and a run's run.json
    (data / "extra.json").write_text('{"rows": []}\n')
    run = tmp_path / "r1"
    run.mkdir()
    (run / "run.json").write_text('{"status": "completed"}\n')
    (tmp_path / "notes.txt").write_text("mine\n")
    kept = {p: p.read_bytes() for p in (data / "train.jsonl", data / "extra.json", run / "run.json",
                                        tmp_path / "notes.txt")}
    for target in kept:
        assert main(["assess", f"data.dataset_name={data}", "--no-probe", "--json", "--out", str(target)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"--out {target}: that file exists and is not an assessment loratune wrote" in err and "fix:" in err
    assert {p: p.read_bytes() for p in kept} == kept
    out = tmp_path / "assessment.json"
    for _ in range(2):  # a new file, then its own earlier assessment: replaced
        assert main(["assess", f"data.dataset_name={data}", "--no-probe", "--json", "--out", str(out)]) == 0
        assert json.loads(out.read_text())["labels"] == ["alarm", "music", "weather"]


def test_probe_summary_and_cache(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["assess", f"data.dataset_name={data}", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    p = d["probe"]
    assert p["cached"] is False and p["val_rows"] == 31 and 0.0 <= p["macro_f1"] <= 1.0
    assert {c["label"] for c in p["classes"]} == {"alarm", "music", "weather"}
    # the probe's bootstrap SE, or (a probe right on every row: a bootstrap of 0) the binomial one; never 0
    assert d["resolution"]["method"].startswith("bootstrap" if 0 < p["macro_f1"] < 1 else "binomial")
    assert d["resolution"]["macro_f1_se"] > 0
    assert any((tmp_path / "cache" / "embeddings").glob("*.npy"))
    # second run: embeddings come from the cache; the rich summary renders
    assert main(["assess", f"data.dataset_name={data}"]) == 0
    text = capsys.readouterr().out
    assert "cached embeddings" in text and "start config" in text and "label-conflict-exact" in text


@pytest.mark.parametrize("args,needle", [
    (["data.train_file=/no/such/file.jsonl"], "does not exist"),
    (["bogus_key=1"], "unknown config key"),
    (["r=0"], "adapter.r"),
])
def test_bad_input_exits_2(args, needle, capsys):
    assert main(["assess", "--no-probe", *args]) == 2
    assert needle in capsys.readouterr().err


def test_single_class_exits_2(tmp_path, capsys):
    f = tmp_path / "one.jsonl"
    f.write_text('{"text": "a b c", "label": "x"}\n{"text": "d e f", "label": "x"}\n', encoding="utf-8")
    assert main(["assess", "--no-probe", f"data.train_file={f}"]) == 2
    assert "single class" in capsys.readouterr().err


def test_the_start_command_trains_the_data_and_model_assessed(tiny_bert, intent_data, capsys):
    """'start with:' dropped --data and the model: pasted, it trained MiniLM on the embedded demo."""
    from loratune.cli import main

    assert main(["assess", "--no-probe", "--data", str(intent_data), f"name_or_path={tiny_bert}", "max_length=16",
                 "per_device_train_batch_size=32"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    start = out[out.index("start with: loratune train"):]
    assert f"--data {intent_data}" in start and f"name_or_path={tiny_bert}" in start
    assert "the proposal replaces your" in start and "per_device_train_batch_size=32" in start


def test_the_start_command_quotes_the_overrides_as_a_shell_reads_them(tiny_bert, intent_data, tmp_path, capsys):
    """'dataset_name=my data' was printed unquoted: pasted, train read an override 'data' with no '='."""
    import shlex
    import shutil

    from loratune.cli import main

    spaced = tmp_path / "my data"
    shutil.copytree(intent_data, spaced)
    assert main(["assess", "--no-probe", f"dataset_name={spaced}", f"name_or_path={tiny_bert}", "max_length=16"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("start with: loratune train"))
    argv = shlex.split(line.removeprefix("start with: "))
    assert argv[:2] == ["loratune", "train"] and f"dataset_name={spaced}" in argv
    assert all("=" in a for a in argv[2:]), argv


def test_the_start_alpha_follows_the_runs_rslora(tiny_bert, intent_data, capsys):
    """With adapter.use_rslora=true the proposal read 'lora_alpha=16: scale s = alpha/r = 2' at r=8: under rsLoRA that
    is s = 16/sqrt(8) = 5.66, past protocol 1's cap of 4. It proposes alpha = 2 sqrt(r) and says s = alpha/sqrt(r)."""
    from loratune.cli import main

    assert main(["assess", "--no-probe", "--data", str(intent_data), f"name_or_path={tiny_bert}", "max_length=16",
                 "adapter.use_rslora=true"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "start-scale-2: lora_alpha=5.66: scale s = alpha/sqrt(r) = 2 " in out
    start = out[out.index("start with: loratune train"):]
    assert "adapter.use_rslora=true" in start and " r=8 lora_alpha=5.66 " in start


def test_assess_takes_a_thresholds_file(data, tmp_path, capsys):
    """long_tail_count 40 (of 30 rows a class) puts every class in the long tail; a bad value is exit 2."""
    t = tmp_path / "t.yaml"
    t.write_text("long_tail_count: 40\n")
    assert main(["assess", f"data.dataset_name={data}", "--no-probe", "--json", "--thresholds", str(t)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["thresholds"]["long_tail_count"] == 40
    tail = next(f for f in d["findings"] if f["id"] == "long-tail")
    assert tail["evidence"]["long_tail_classes"] == 3 and "under 40 training rows" in tail["message"]
    t.write_text("long_tail_count: -1\n")
    assert main(["assess", f"data.dataset_name={data}", "--no-probe", "--thresholds", str(t)]) == 2
    assert "threshold 'long_tail_count': got -1" in capsys.readouterr().err
    # a cosine above 1 turned near-leakage off, silently (exit 0): shares and cosines are refused outside 0..1
    for name in ("near_leak_similarity", "near_duplicate_similarity", "truncation_share"):
        t.write_text(f"{name}: 1.5\n")
        assert main(["assess", f"data.dataset_name={data}", "--no-probe", "--thresholds", str(t)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"threshold '{name}': got 1.5; allowed: a number >= 0 and <= 1" in err and "Traceback" not in err
    t.write_text("near_leak_similarity: 1\n")  # the bound itself: only identical texts
    assert main(["assess", f"data.dataset_name={data}", "--no-probe", "--json", "--thresholds", str(t)]) == 0
    assert json.loads(capsys.readouterr().out)["thresholds"]["near_leak_similarity"] == 1


def test_api_assess_takes_thresholds_and_a_cache_dir_as_assess_does(data, tmp_path, capsys, monkeypatch):
    # api.assess had neither keyword (a TypeError), so a notebook could not assess with the thresholds of a study
    from loratune import api
    from loratune.errors import UserError

    cfg = api.load_config(None, [f"data.dataset_name={data}"])
    a = api.assess(cfg, probe=False, thresholds={"long_tail_count": 40})
    t = tmp_path / "t.yaml"
    t.write_text("long_tail_count: 40\n")
    assert main(["assess", f"data.dataset_name={data}", "--no-probe", "--json", "--thresholds", str(t)]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert a.thresholds.long_tail_count == 40 and a.to_dict()["thresholds"] == cli["thresholds"]
    tail = next(f for f in a.to_dict()["findings"] if f["id"] == "long-tail")
    assert tail["evidence"]["long_tail_classes"] == 3
    with pytest.raises(UserError, match="threshold 'long_tail_count': got -1"):
        api.assess(cfg, probe=False, thresholds={"long_tail_count": -1})
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "default"))
    assert api.assess(cfg, cache_dir=tmp_path / "mine").probe.cached is False
    assert any((tmp_path / "mine").rglob("*.npy")) and not (tmp_path / "default").exists()
    assert api.assess(cfg, cache_dir=str(tmp_path / "mine")).probe.cached is True  # read back from it
    assert api.assess(cfg, cache_dir="none").probe.cached is False and not (tmp_path / "default").exists()
