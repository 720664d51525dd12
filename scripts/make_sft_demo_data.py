"""Write the embedded instruction demo (`embedded:instructions-demo`) from the Self-Instruct repository.

Source: GitHub `yizhongw/self-instruct` (Apache-2.0), two human-written files:
  data/seed_tasks.jsonl                        175 seed tasks written by the authors (made for training:
                                               the seed of their instruction data)
  human_eval/user_oriented_instructions.jsonl  252 expert-written tasks, released for evaluation only (its
                                               README asks not to train on it): used here only as novel
                                               prompts of the prompt set, never in train or validation
Every task has one instance (input, output). A row is prompt = instruction, plus "\n\n" + input when the
input is not empty; completion / reference = output. Texts are unchanged.

Sampling (file order kept within each output file):
- rows whose prompt + completion exceed MAX_WORDS words are dropped (SmolLM2-135M at max_length 256), and
  so are rows whose reference exceeds PROMPT_REF_WORDS words from the prompt set;
- closeness of two rows = chrF (loratune.generation.chrf) of one instruction against the other (the
  instruction alone: the input is the per-instance content); a row's neighbour is its closest other row;
- familiar: the PROMPT_ROWS seed rows with the closest seed neighbour (ties by file order), taken greedily so
  that each one's neighbour stays in the training data: a familiar prompt asks for the same kind of thing as
  a training prompt, in other words or on other input;
- novel: the PROMPT_ROWS user-oriented rows whose nearest training instruction is least close;
- validation: VAL_ROWS of the remaining seed rows, drawn with random.Random(0); train: the rest.
The script prints how close each prompt-set group is to the training prompts (instruction chrF against its
nearest training instruction), recorded in SOURCE.md. Run from the repo root with the two files:
    .venv/bin/python scripts/make_sft_demo_data.py seed_tasks.jsonl user_oriented_instructions.jsonl
"""

import json
import random
import sys
from pathlib import Path

MAX_WORDS = 150
PROMPT_REF_WORDS = 60
PROMPT_ROWS = 20
VAL_ROWS = 20
OUT = Path(__file__).resolve().parent.parent / "src" / "loratune" / "demo_data" / "instructions"


def _rows(path: str, kind: str) -> list[dict]:
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        inst = task["instances"][0]
        prompt = task["instruction"] + (("\n\n" + inst["input"]) if inst["input"].strip() else "")
        out.append({"id": task["id"], "app": task.get("motivation_app") if kind == "user" else None,
                    "prompt": prompt, "completion": inst["output"]})
    return out


def _words(text: str) -> int:
    return len(text.split())


def _write(name: str, rows: list[dict]) -> None:
    with (OUT / name).open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _instruction(r: dict) -> str:
    return r["prompt"].split("\n\n", 1)[0]


def main(seed_path: str, user_path: str) -> None:
    from loratune.generation import chrf

    fits = lambda r: _words(r["prompt"]) + _words(r["completion"]) <= MAX_WORDS and r["completion"].strip()  # noqa
    short = lambda r: _words(r["completion"]) <= PROMPT_REF_WORDS  # noqa: E731
    seeds = [r for r in _rows(seed_path, "seed") if fits(r)]
    users = [r for r in _rows(user_path, "user") if fits(r) and short(r)]
    ins = [_instruction(r) for r in seeds]
    nn = []  # (closeness of the nearest other seed row, minus its index)
    for i in range(len(seeds)):
        nn.append(max((chrf(ins[i], ins[j]), -j) for j in range(len(seeds)) if j != i))
    familiar, pinned = [], set()
    for i in sorted(range(len(seeds)), key=lambda k: (-nn[k][0], k)):
        j = -nn[i][1]
        if len(familiar) < PROMPT_ROWS and short(seeds[i]) and i not in pinned and j not in familiar:
            familiar.append(i)
            pinned.add(j)
    rest = [i for i in range(len(seeds)) if i not in familiar]
    val_idx = set(random.Random(0).sample([i for i in rest if i not in pinned], VAL_ROWS))
    train = [i for i in rest if i not in val_idx]
    train_ins = [ins[i] for i in train]
    near = lambda text: max(chrf(text, t) for t in train_ins)  # noqa: E731
    user_near = [(near(_instruction(r)), k) for k, r in enumerate(users)]
    novel = sorted(k for _, k in sorted(user_near)[:PROMPT_ROWS])

    OUT.mkdir(parents=True, exist_ok=True)
    pair = lambda r: {"prompt": r["prompt"], "completion": r["completion"], "source_id": r["id"]}  # noqa: E731
    _write("train.jsonl", [pair(seeds[i]) for i in train])
    _write("validation.jsonl", [pair(seeds[i]) for i in sorted(val_idx)])
    item = lambda r, g: {"prompt": r["prompt"], "reference": r["completion"], "group": g,  # noqa: E731
                         "source_id": r["id"]}
    _write("prompt_set.jsonl", [item(seeds[i], "familiar") for i in sorted(familiar)]
           + [item(users[k], "novel") for k in novel])
    for name, texts in (("familiar", [ins[i] for i in familiar]), ("novel", [_instruction(users[k]) for k in novel])):
        sims = [near(x) for x in texts]
        print(f"{name}: {len(texts)} prompts, nearest training instruction chrF: mean {sum(sims) / len(sims):.3f}, "
              f"min {min(sims):.3f}, max {max(sims):.3f}")
    print(f"train {len(train)}, validation {len(val_idx)} (of {len(seeds)} seed rows within {MAX_WORDS} words)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
