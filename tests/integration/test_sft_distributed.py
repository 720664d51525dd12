"""Task causal-lm under `accelerate launch`: two CPU processes (gloo, DDP) on the tiny random-init Llama.

The check of the gradient exchange: two ranks with per-device batch 4 take the two micro-batches that one
process with gradient accumulation 2 takes at each step (the same seed, the same batch order), and DDP
averages their gradients as accumulation does. So, with dropout off, the adapter rank 0 saves equals the
single-process one: it could not if rank 1's gradients were missing, or computed on weights that had
drifted from rank 0's at any step. The same check holds for `--use_fsdp` (FSDP2, method full): the whole
model rank 0 gathers and saves equals the single-process one, while each rank held half the parameters.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loratune import cli

from sft_support import make_sft_rows, save_tiny_llama_lm
from support import full_drops_lora_keys, write_jsonl

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available in this torch build")

STEPS, EVERY, BATCH, RANKS = 8, 4, 4, 2


def overrides(lm: str, data: Path, out: Path, **extra) -> list[str]:
    base = {"task": "causal-lm", "name_or_path": lm, "dataset_name": str(data), "output_dir": str(out),
            "max_steps": STEPS, "eval_steps": EVERY, "per_device_train_batch_size": BATCH, "learning_rate": 1e-2,
            "target_modules": "[attn.q, attn.v]", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "max_length": 32,
            "max_new_tokens": 6,
            # float32: the ranks are compared with one process to 1e-5, an identity of float32 arithmetic; under bf16
            # autocast (precision auto on a CPU with avx512_bf16) the ranks' split of the threads rounds differently
            "precision": "fp32"}
    base.update(extra)
    return [f"{k}={v}" for k, v in full_drops_lora_keys(base).items()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[str, Path]:
    lm = save_tiny_llama_lm(tmp_path_factory.mktemp("tiny-llama-lm"), chat_template=False)
    data = tmp_path_factory.mktemp("sft-data")
    write_jsonl(data / "train.jsonl", make_sft_rows(8, seed=1))
    write_jsonl(data / "validation.jsonl", make_sft_rows(2, seed=2))
    return lm, data


def launch(mode: str, args: list[str]) -> subprocess.CompletedProcess:
    """accelerate launch with RANKS CPU processes; mode --multi_gpu (DDP: accelerate's torchrun launcher) or
    --use_fsdp. With no GPU visible the ranks run on CPU over gloo."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", mode, "--num_processes", str(RANKS),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "loratune.cli", "train", "-q", *args]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def launched(setup, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    lm, data = setup
    out = tmp_path_factory.mktemp("ddp") / "run"
    return out, launch("--multi_gpu", overrides(lm, data, out))


def test_two_ranks_write_one_record_counting_every_rank(launched):
    out, proc = launched
    run = json.loads((out / "run.json").read_text())
    assert (run["status"], run["world_size"], run["steps_done"]) == ("completed", RANKS, STEPS)
    assert run["global_batch"] == BATCH * RANKS
    assert run["examples_seen"] == STEPS * BATCH * RANKS
    hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [p["step"] for p in hist] == [0, EVERY, 2 * EVERY]
    assert [p["examples_seen"] for p in hist] == [0, EVERY * BATCH * RANKS, 2 * EVERY * BATCH * RANKS]
    # rank 0 alone writes (the lock released), and alone speaks: one summary for the two processes
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "config.yaml", "history.jsonl", "run.json"]
    assert proc.stdout.count("run completed") == 1, proc.stdout


def test_the_adapter_loads_with_plain_peft_and_equals_one_process_accumulating_both_ranks(launched, setup,
                                                                                         tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lm, data = setup
    out, _ = launched
    ref = tmp_path / "one-process"
    assert cli.main(["train", "-q", *overrides(lm, data, ref, gradient_accumulation_steps=RANKS)]) == 0
    ddp = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lm), out / "adapter")
    one = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lm), ref / "adapter")
    a = {n: p for n, p in ddp.named_parameters() if "lora_" in n}
    b = {n: p for n, p in one.named_parameters() if "lora_" in n}
    assert a.keys() == b.keys() and a
    # not a vacuous match: LoRA's B matrices start at zero, and training moved them
    assert all(float(b[n].abs().max()) > 1e-3 for n in b if "lora_B" in n)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-6, msg=n)
    ref_run = json.loads((ref / "run.json").read_text())
    ddp_run = json.loads((out / "run.json").read_text())
    assert ref_run["examples_seen"] == ddp_run["examples_seen"]
    assert ddp_run["best"]["val/loss"] == pytest.approx(ref_run["best"]["val/loss"], rel=1e-5)


def test_an_epochs_short_last_step_leaves_no_rank_out_and_equals_one_process(setup, tmp_path):
    # 32 rows at batch 5: 7 micro-batches an epoch, so each epoch's last step over the two ranks has one micro-batch
    # (rank 1 none: it runs one at weight 0 to take part in the all-reduce) and the step's gradient is that one
    # batch's, as one process accumulating 2 takes the epoch in 2 + 2 + 2 + 1 (train.step_groups)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lm, data = setup
    extra = {"per_device_train_batch_size": 5, "max_steps": -1, "num_train_epochs": 2, "eval_steps": 4}
    ddp, ref = tmp_path / "ddp", tmp_path / "one-process"
    launch("--multi_gpu", overrides(lm, data, ddp, **extra))
    assert cli.main(["train", "-q", *overrides(lm, data, ref, gradient_accumulation_steps=RANKS, **extra)]) == 0
    ddp_run, ref_run = (json.loads((d / "run.json").read_text()) for d in (ddp, ref))
    assert ddp_run["steps_done"] == ref_run["steps_done"] == 8  # 4 steps an epoch, the 4th on one micro-batch
    assert ddp_run["examples_seen"] == ref_run["examples_seen"] == 64 and ddp_run["final"]["epoch"] == 2.0
    a, b = (PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lm), d / "adapter") for d in (ddp, ref))
    one = {n: p for n, p in b.named_parameters() if "lora_" in n}
    for n, p in a.named_parameters():
        if "lora_" in n:
            torch.testing.assert_close(p, one[n], rtol=1e-5, atol=1e-6, msg=n)


def test_a_classifier_under_a_launcher_is_a_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["train", f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "only task causal-lm runs under accelerate launch" in err and "fix:" in err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def fsdp(setup, tmp_path_factory) -> tuple[Path, Path]:
    """method full under --use_fsdp, generating for a prompt set at each evaluation (every rank must take part
    in each forward pass), and the same run in one process accumulating both ranks' micro-batches."""
    lm, data = setup
    prompts = tmp_path_factory.mktemp("prompts") / "prompt_set.jsonl"
    write_jsonl(prompts, [{"prompt": r["prompt"], "reference": r["completion"], "group": g}
                          for r, g in zip(make_sft_rows(1, seed=3), ("familiar", "novel", "familiar", "novel"))])
    out, ref = tmp_path_factory.mktemp("fsdp") / "run", tmp_path_factory.mktemp("fsdp-ref") / "run"
    launch("--use_fsdp", overrides(lm, data, out, method="full", prompt_set=prompts))
    assert cli.main(["train", "-q", *overrides(lm, data, ref, method="full", prompt_set=prompts,
                                               gradient_accumulation_steps=RANKS)]) == 0
    return out, ref


def test_fsdp_shards_the_full_model_and_saves_what_one_process_accumulating_both_ranks_saves(fsdp, setup):
    from transformers import AutoModelForCausalLM

    lm, _ = setup
    out, ref = fsdp
    run, ref_run = (json.loads((d / "run.json").read_text()) for d in (out, ref))
    assert (run["status"], run["distributed"], run["world_size"], run["steps_done"]) == ("completed", "fsdp",
                                                                                         RANKS, STEPS)
    # really sharded: the ranks' parameters add up to the model, each holding about half of them
    total = run["params"]["total"]
    assert sum(run["params_per_rank"]) == total and len(run["params_per_rank"]) == RANKS
    assert all(abs(n - total / RANKS) <= 0.05 * total for n in run["params_per_rank"]), run["params_per_rank"]
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "config.yaml", "generations.jsonl",
                                                     "history.jsonl", "run.json"]
    saved = AutoModelForCausalLM.from_pretrained(out / "adapter").state_dict()  # plain transformers loads it
    one = AutoModelForCausalLM.from_pretrained(ref / "adapter").state_dict()
    base = AutoModelForCausalLM.from_pretrained(lm).state_dict()
    assert saved.keys() == one.keys() and run["adapter_step"] == ref_run["adapter_step"]
    for n in one:
        assert float((one[n] - base[n]).abs().max()) > 1e-3, n  # not a vacuous match: training moved it
        torch.testing.assert_close(saved[n], one[n], rtol=1e-5, atol=1e-6, msg=n)
    assert run["best"]["val/loss"] == pytest.approx(ref_run["best"]["val/loss"], rel=1e-5)
    # generation on the sharded model: one record, the outputs one process writes
    gens, ref_gens = ((d / "generations.jsonl").read_text().splitlines() for d in (out, ref))
    assert len(gens) == 3 * 4 and gens == ref_gens


@pytest.mark.parametrize("env, extra, said", [
    ({"ACCELERATE_USE_FSDP": "true"}, {}, "shards adapter.method=full only"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "true"}, {"method": "full"}, "FSDP_OFFLOAD_PARAMS=true"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, {"method": "full"}, "ACCELERATE_USE_DEEPSPEED=true"),
])
def test_a_launch_this_loop_cannot_run_is_refused_before_the_model_loads(setup, tmp_path, monkeypatch, capsys,
                                                                         env, extra, said):
    lm, data = setup
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert cli.main(["train", "-q", *overrides(lm, data, tmp_path / "run", **extra)]) == 2
    err = capsys.readouterr().err
    assert said in err and "fix:" in err
    assert not (tmp_path / "run").exists()
