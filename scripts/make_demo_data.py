"""Write the embedded demo dataset: a stratified subset of BANKING77 from ../shared/data.

Per intent (77): 24 train rows, 8 validation rows, 10 test rows, picked with random.Random(0)
in sorted-label order; file order follows the source. A row whose text (case, space and punctuation
aside: `loratune assess`'s key) was already picked, in this split or an earlier one, is passed over for
the next one of its intent: no copy leaks from train into validation/test and no text carries two
labels, so the demo passes its own `loratune assess`. Run from the repo root:
    .venv/bin/python scripts/make_demo_data.py ../shared/data/banking77
"""

import json
import random
import shutil
import sys
from pathlib import Path

PER_LABEL = {"train": 24, "validation": 8, "test": 10}


def main(src: str) -> None:
    src_dir = Path(src)
    out = Path(__file__).resolve().parent.parent / "src" / "loratune" / "demo_data" / "banking77"
    out.mkdir(parents=True, exist_ok=True)
    from loratune.assess.text import normalise

    rng = random.Random(0)
    seen: set[str] = set()  # texts picked so far, any split, any label
    for split, k in PER_LABEL.items():
        rows = [json.loads(line) for line in (src_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        by_label: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_label.setdefault(r["label"], []).append(i)
        keep = set()
        for label in sorted(by_label):
            idx = by_label[label][:]
            rng.shuffle(idx)
            picked = 0
            for i in idx:
                key = normalise(rows[i]["text"])
                if picked == k or key in seen:
                    continue
                seen.add(key)
                keep.add(i)
                picked += 1
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i in sorted(keep):
                f.write(json.dumps({"text": rows[i]["text"], "label": rows[i]["label"]}, ensure_ascii=False) + "\n")
        print(split, len(keep))
    shutil.copy(src_dir / "LICENSE", out / "LICENSE")
    (out / "SOURCE.md").write_text(
        "# BANKING77 demo subset (embedded in loratune)\n\n"
        "- Derived from BANKING77: Casanueva et al., \"Efficient Intent Detection with Dual Sentence Encoders\",\n"
        "  NLP4ConvAI @ ACL 2020. Upstream: GitHub `PolyAI-LDN/task-specific-datasets` (banking_data).\n"
        "- License: Creative Commons Attribution 4.0 International (CC BY 4.0); the upstream license text is\n"
        "  `LICENSE` beside this file. Attribution: cite the paper above.\n"
        "- Changes: a stratified subset (per intent: 24 train, 8 validation, 10 test rows, chosen with\n"
        "  `random.Random(0)`; a text already picked, in any split and with any label, is passed over for\n"
        "  the next row of its intent, so no row leaks across splits and no text has two labels), made by\n"
        "  `scripts/make_demo_data.py` from the converted JSONL copy whose\n"
        "  validation split is a seeded 10% carve-out of the upstream train set. Texts are unchanged apart\n"
        "  from whitespace collapsed to single spaces in that copy.\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/banking77")
