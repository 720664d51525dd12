"""Calibrate and score `loratune diagnose` on runs loratune did not make.

The corpus (committed fixtures, nothing downloaded):
- tests/fixtures/external/trainer/: plain HF Trainer + peft runs of MiniLM, and TRL SFTTrainer runs of
  SmolLM2, with induced pathologies, made by bench/make_external_corpus.py (manifest.json: how each run was
  made, the minimal-intervention triples); labels.json: each run's label, the verdicts a senior engineer
  would accept, and the numbers behind the label, from an independent review that saw neither loratune's
  rules nor its verdicts (the manifest's automatic labels are not used);
- tests/fixtures/external/public/: public trainer_state.json files from GitHub, labelled the same way;
- tests/fixtures/external/public_c/ to public_k/: folds C to K, fresh sets of public trainer_state.json files from
  other repositories; public_l/ to the newest fold (FRESH): public Trainer runs recorded in Jupyter notebooks (the
  progress table of a saved output), read with history_io.read_notebook at the manifest's `table_index`, collected
  by the route of bench/public_folds.py. Each fresh fold is labelled blind from its numbers (twice from fold L on:
  review2.json) by reviewers who saw neither loratune's rules nor its verdicts, scored once against rules frozen
  before its labels existed (HELD_OUT: the held-out record, never recomputed), then read and the rules changed
  before the next fold: every fold here is in-sample now unless UNREAD names it.

Split by dataset, never by run: fold A (thresholds fitted) = the banking77 and clinc-oos Trainer runs plus
every other public repository (sorted by name, even positions); fold B (held out) = the clinc150 Trainer
runs, the TRL SFT runs and the other public repositories; fold C (held out twice over) = public_c. Thresholds are fitted on A by coordinate
descent over a coarse grid around each default (objective: share of accepted top verdicts, minus a heavy
penalty for `healthy` on a run labelled overfit / diverged / collapsed / lr-too-large (UNFORGIVABLE); a move must
win >= 2 runs); the confusion matrix is reported on B with those thresholds. The reverse fold (fit on B, score A) is
reported too, as a check that the result does not hinge on one split. Route precision: which route of a rule
decided each run's top verdict, and how often it was accepted (in-sample: where a rule reads curves badly).

finetune-doctor (PyPI; the competitor) runs on the same runs from its own virtual environment
(`--fd-python`, default /work/fd-venv/bin/python; skipped with a note when absent), through
bench/finetune_doctor_adapter.py.

    python bench/diagnose_external.py            # fit on A, score B, write bench/results/diagnose_external.{md,json}
    python bench/diagnose_external.py --no-fit   # score the thresholds in src/loratune/rules.py as they are
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from loratune.diagnose import compare, diagnose, evaluate_rules  # noqa: E402
from loratune.features import compute_features  # noqa: E402
from loratune.history_io import load_run, notebook_trainer_state, read_notebook  # noqa: E402
from loratune.rules import RULES, THRESHOLDS, default_thresholds  # noqa: E402

TRAINER = ROOT / "tests" / "fixtures" / "external" / "trainer"
PUBLIC = ROOT / "tests" / "fixtures" / "external" / "public"
# fresh public sets: fold, folder, the commit whose rules were frozen before the fold's labels existed (listed, never
# globbed: a fold enters here once the rules it is scored against are committed). Fold E (28 runs) was labelled while
# the fold-D rule changes were made, by a reviewer who saw no loratune code; its rules are those of c07a0cc. Fold F
# (30 runs) likewise, while the fold-E changes were made (rules of 7b863a4, committed before F's labels, 8eec854).
FRESH = (("C", ROOT / "tests" / "fixtures" / "external" / "public_c", "f70a259"),
         ("D", ROOT / "tests" / "fixtures" / "external" / "public_d", "9c8282d"),
         ("E", ROOT / "tests" / "fixtures" / "external" / "public_e", "c07a0cc"),
         ("F", ROOT / "tests" / "fixtures" / "external" / "public_f", "7b863a4"),
         ("G", ROOT / "tests" / "fixtures" / "external" / "public_g", "039c07e"),
         ("H", ROOT / "tests" / "fixtures" / "external" / "public_h", "4d60d30"),
         ("I", ROOT / "tests" / "fixtures" / "external" / "public_i", "6a9f614"),
         ("J", ROOT / "tests" / "fixtures" / "external" / "public_j", "663c4c3"),
         ("K", ROOT / "tests" / "fixtures" / "external" / "public_k", "a2d296f"),
         ("L", ROOT / "tests" / "fixtures" / "external" / "public_l", "b41fbd2"),
         ("M", ROOT / "tests" / "fixtures" / "external" / "public_m", "c728eba"),
         ("N", ROOT / "tests" / "fixtures" / "external" / "public_n", "bca727b"),
         ("O", ROOT / "tests" / "fixtures" / "external" / "public_o", "42b43e1"),
         ("P", ROOT / "tests" / "fixtures" / "external" / "public_p", "3bf380d"),
         ("Q", ROOT / "tests" / "fixtures" / "external" / "public_q", "e2bbbd0"),
         ("R", ROOT / "tests" / "fixtures" / "external" / "public_r", "578c6b3"),
         ("S", ROOT / "tests" / "fixtures" / "external" / "public_s", "4c2814e"),
         ("T", ROOT / "tests" / "fixtures" / "external" / "public_t", "f3a9c26"),
         ("U", ROOT / "tests" / "fixtures" / "external" / "public_u", "1ae4a4d"),
         ("V", ROOT / "tests" / "fixtures" / "external" / "public_v", "bf66ca4"),
         ("W", ROOT / "tests" / "fixtures" / "external" / "public_w", "2d4a91b"),
         ("X", ROOT / "tests" / "fixtures" / "external" / "public_x", "429e50c"),
         ("Y", ROOT / "tests" / "fixtures" / "external" / "public_y", "3bdf90c"),
         ("Z", ROOT / "tests" / "fixtures" / "external" / "public_z", "3bdf90c"),
         ("AA", ROOT / "tests" / "fixtures" / "external" / "public_aa", "173d08d"),
         ("AB", ROOT / "tests" / "fixtures" / "external" / "public_ab", "90f7587"),
         ("AC", ROOT / "tests" / "fixtures" / "external" / "public_ac", "968fb7d"),
         ("AD", ROOT / "tests" / "fixtures" / "external" / "public_ad", "c67684a"),
         ("AE", ROOT / "tests" / "fixtures" / "external" / "public_ae", "d3f56a4"),
         ("AF", ROOT / "tests" / "fixtures" / "external" / "public_af", "a190b71"),
         ("AG", ROOT / "tests" / "fixtures" / "external" / "public_ag", "a8fd68f"),
         ("AH", ROOT / "tests" / "fixtures" / "external" / "public_ah", "9df7be0"),
         ("AI", ROOT / "tests" / "fixtures" / "external" / "public_ai", "4ed5fce"),
         ("AJ", ROOT / "tests" / "fixtures" / "external" / "public_aj", "a8a0fb3"),
         ("AK", ROOT / "tests" / "fixtures" / "external" / "public_ak", "a8a0fb3"),
         ("AL", ROOT / "tests" / "fixtures" / "external" / "public_al", "de2ceb2"),
         ("AM", ROOT / "tests" / "fixtures" / "external" / "public_am", "de2ceb2"),
         ("AN", ROOT / "tests" / "fixtures" / "external" / "public_an", "de2ceb2"),
         ("AO", ROOT / "tests" / "fixtures" / "external" / "public_ao", "5214302"),
         ("AP", ROOT / "tests" / "fixtures" / "external" / "public_ap", "5214302"),
         ("AQ", ROOT / "tests" / "fixtures" / "external" / "public_aq", "5214302"),
         ("AR", ROOT / "tests" / "fixtures" / "external" / "public_ar", "5662a6a"),
         ("AS", ROOT / "tests" / "fixtures" / "external" / "public_as", "5662a6a"),
         ("AT", ROOT / "tests" / "fixtures" / "external" / "public_at", "5662a6a"),
         ("AU", ROOT / "tests" / "fixtures" / "external" / "public_au", "95028ab"),
         ("AV", ROOT / "tests" / "fixtures" / "external" / "public_av", "82fc4a7"),
         ("AW", ROOT / "tests" / "fixtures" / "external" / "public_aw", "e9d773c"),
         ("AX", ROOT / "tests" / "fixtures" / "external" / "public_ax", "b182c84"))
# each fresh fold's first scoring, the held-out record (fold: loratune accepted, runs, finetune-doctor accepted, the
# commit that recorded the score, None where the notes of that time name none). Written once, when a fold is scored;
# never recomputed (the rules have changed since). The table shows every fold and two totals: C on, and I on (the span
# the notes and the closing notes have quoted since fold J).
HELD_OUT = {"C": (20, 31, 24, "9c8282d"), "D": (21, 30, 24, "a9640b5"), "E": (20, 28, 19, "5b51385"),
            "F": (18, 30, 24, "f9d356f"), "G": (23, 30, 20, "6985c96"), "H": (19, 27, 20, "0d8611b"),
            "I": (24, 28, 25, "c9af174"), "J": (16, 19, 14, "4335ef1"), "K": (8, 13, 9, "1643b7f"),
            "L": (18, 25, 14, "f38ac72"), "M": (13, 25, 19, "af12714"), "N": (18, 25, 16, "b10ce5f"),
            "O": (19, 25, 19, "161551d"), "P": (14, 25, 6, "c33ca54"), "Q": (11, 18, 6, "9f4efbb"),
            "R": (18, 25, 13, "e09eced"), "S": (22, 25, 17, "1153746"),
            "T": (15, 20, 12, "8ad02bf"), "U": (19, 25, 15, "dbb9d4f"),
            "V": (25, 25, 17, "3956a78"), "W": (24, 25, 12, "e23be45"),
            "X": (10, 11, 5, "0e25344"), "Y": (20, 25, 17, "14cafbd"),
            "Z": (16, 25, 20, "9ad69e7"), "AA": (14, 25, 15, "295ebac"),
            "AB": (7, 8, 6, "44d4638"), "AC": (18, 25, 15, "c5d9580"), "AD": (29, 31, 25, "32c0ae6"),
            "AE": (14, 19, 11, "6a9aba2"), "AF": (18, 23, 13, "0a25621"),
            "AG": (3, 3, 2, "817ab28"), "AH": (18, 19, 13, "8256064"), "AI": (15, 20, 12, "52d1235"),
            "AJ": (9, 11, 7, "6cd2fb0"), "AK": (29, 38, 20, "4e4ecab"),
            "AL": (10, 14, 8, "a2e9e65"), "AM": (5, 5, 3, "63f829a"), "AN": (30, 35, 17, "2420c3f"),
            "AO": (8, 8, 5, "4739330"), "AP": (19, 26, 10, "e4913dd"),
            "AQ": (14, 16, 10, "8d25fa4"), "AR": (11, 16, 11, "2fd30c6"),
            "AS": (3, 3, 3, "fa57785"), "AT": (9, 11, 7, "36f94b4"), "AU": (16, 20, 14, "0c3f089"),
            "AV": (48, 60, 44, "2561b3c"), "AW": (26, 33, 21, "1ce0bd4"),
            "AX": (16, 18, 14, "ad8f685")}
RECORD_FROM = "I"  # the first fold of the quoted span (see HELD_OUT)
# a second blind review of a fresh fold (same brief, made later, never shown the first): the two reviews' agreement
# bounds what any reader of the same numbers can score
REVIEW2 = "review2.json"
# the fresh folds not read yet (no rule was written looking at them): their tables are held-out scores
UNREAD = ()
# how a fold's first scoring relates to its labels, where "rules frozen before the labels existed" is not exact
FREEZE_NOTE = {"AX": "rules of b182c84 (fold AW's round was the last change to a corpus verdict), unchanged while "
                     "its two blind reviews were written, each by two reviewers on alternate runs (their replies gave "
                     "label counts only); collected by eight helpers with 458 fetches in a new session",
               "AW": "rules of e9d773c (fold AV's round e1bc4e4 was the last change to a corpus verdict; the one "
                     "rule change since, collapsed's per-class route, moves none), unchanged while its two blind "
                     "reviews were written, each by two reviewers on alternate runs (their replies gave label counts "
                     "only); collected by nine helpers with 488 fetches in a new session",
               "AV": "rules of 82fc4a7 (fold AU's round f99fb3c was the last rule change; the rule and reader fixes "
                     "made since moved no corpus verdict), unchanged while its two blind reviews were written, each by "
                     "three reviewers, every third run (their replies gave label counts only); collected by ten "
                     "helpers with 499 fetches in a new session",
               "AU": "rules of 95028ab (no rule or threshold changed since fold AT's scoring; the reader fixes made "
                     "since moved no corpus verdict), unchanged while its two blind reviews were written, each by two "
                     "reviewers on alternate runs (their replies gave label counts only); collected by eleven helpers "
                     "with 497 fetches in a new session",
               "AT": "rules of 5662a6a (unchanged since fold AR's scoring), unchanged while its two blind reviews "
                     "were written, each by two reviewers on alternate runs (their replies gave label counts only); "
                     "collected by fourteen helpers with 463 fetches in a new session that changed no diagnosis rule "
                     "before the scoring",
               "AS": "rules of 5662a6a (unchanged since fold AR's scoring: none of the changes tried after it was "
                     "kept), unchanged while its two blind reviews were written (their replies gave label "
                     "counts only); collected by two helpers with the session's last 40 fetches after AR's scoring",
               "AR": "rules of 5662a6a (5214302's, with the reader's one change: a Trainer run's one held-out eval set "
                     "logged under its own name read as its validation set, made on fold H before this fold was "
                     "collected), unchanged while its two blind reviews were written, each by two reviewers on "
                     "alternate runs (their replies gave label counts only); collected by ten helpers with 411 "
                     "fetches",
               "AQ": "rules of 5214302 (unchanged since fold AO's scoring; AO and AP changed no rule), unchanged while its "
                     "two blind reviews were written, each by two reviewers on alternate runs (their replies gave label "
                     "counts only); collected by eight helpers with 393 fetches in a session whose one change before "
                     "the scoring was to the tuning protocol, not the diagnosis",
               "AP": "rules of 5214302 (unchanged since fold AO's scoring; AO changed no rule), unchanged while its two "
                     "blind reviews were written, each by two reviewers on alternate runs (their replies gave label counts "
                     "only); collected by six helpers with 450 fetches in a new session whose one change before the "
                     "scoring was to the tuning protocol, not the diagnosis",
               "AO": "rules of 5214302 (fold AN's round: a three-eval curve with no train-loss trend whose val loss rose "
                     "10% beyond its noise at the last eval reads overfit, in-sample), committed after the fold was "
                     "collected and before any of its runs was read or labelled; unchanged while its two blind reviews "
                     "were written (their replies gave label counts only); collected by two helpers with 77 fetches",
               "AN": "rules of de2ceb2 (unchanged since fold AL's scoring; folds AL and AM changed no rule), unchanged "
                     "while its two blind reviews were written, each by two reviewers on alternate runs (their replies gave "
                     "label counts only); collected by six helpers with 404 fetches",
               "AM": "rules of de2ceb2 (unchanged since fold AL's scoring, which changed no rule), unchanged while its "
                     "two blind reviews were written (their replies gave label counts only); collected by one helper with "
                     "the session's last 50 fetches",
               "AL": "rules of de2ceb2 (fold AK's round: the nan/inf filter's zero does not count in a run whose loss "
                     "reaches 0.0 on its own, in-sample), unchanged while its two blind reviews were written, each by two "
                     "reviewers on alternate runs (their replies gave label counts only); collected by two helpers with "
                     "102 fetches",
               "AK": "rules of a8a0fb3 (unchanged since fold AJ's scoring, which changed no rule), unchanged while "
                     "its two blind reviews were written, each by two reviewers on alternate runs (their replies gave "
                     "label counts only); collected by six helpers with 346 fetches",
               "AJ": "rules of a8a0fb3 (fold AI's round: lr-too-small's slow-fall route holds off on a language "
                     "model's adapter at an lr inside LoRA's usual range, in-sample), unchanged while its two blind "
                     "reviews were written (their replies gave label counts only); collected by ten helpers with 437 "
                     "fetches",
               "AI": "rules of 4ed5fce (fold AH's round: lr-too-large's climb-back rise needs 3%, lr-too-small's "
                     "'barely moved' needs the plan run, in-sample), unchanged while its two blind reviews were written "
                     "(their replies gave label counts only); collected by seven helpers with 474 fetches",
               "AH": "rules of 9df7be0 (a val-side overfit route for a run that logged no train-loss trend, in-sample "
                     "on fold AE's AppleMax1992), committed while its two blind reviews were being written and before "
                     "any of its labels or curves was read (their replies gave label counts only); collected by five "
                     "helpers with 493 fetches; the rules of a046f2b, before that change, give every AH run the same "
                     "verdict",
               "AG": "rules of a8fd68f (fold AF's round, in-sample: collapse_peak_chance_ratio 2.0 -> 1.5), committed "
                     "before its two blind reviews began (their replies gave label counts only); collected by one "
                     "helper with the session's last 44 fetches; 3 runs, too few to say more than that the change "
                     "broke none of them",
               "AF": "rules of a190b71 (the fold-AE round: a val loss repeating one value, a DPO loss against ln 2), "
                     "committed before its two blind reviews began (their replies gave label counts only); collected "
                     "by seven helpers with 453 fetches; the rules of 0ece323, before the round, score it the same 18 "
                     "of 23",
               "AE": "rules of d3f56a4 (the fold-AD round: the nan/inf filter's zero windows, the fall counted from "
                     "ln(classes)), committed before its two blind reviews began (their replies gave label counts "
                     "only); collected by two helpers with the session's last 140 fetches while fold AD was labelled; "
                     "the rules of c67684a and of eb9f218 score it the same 14 of 19",
               "AD": "rules of c67684a (the fold-AC round: the val size from the accuracy's lattice, diverged's loss "
                     "floor), unchanged while its two blind reviews were written (their replies gave label counts "
                     "only); collected in four parts by four helpers (355 fetches); the rules of eb9f218, before the "
                     "round, score it the same 29 of 31",
               "H": "rules of 4d60d30, written by a reviewer who never opened fold H; its labels were committed "
                    "(233640c, fdcf1c7) after the rules of ab06826 and before the last five rule commits, and the "
                    "rules of ab06826 score it the same, 19 of 27",
               "L": "rules of b41fbd2 (unchanged since b4927cb); the runs are notebooks, read by the notebook "
                    "reader of dcfa37f, written before any fold-L verdict was seen (only its parse was checked: "
                    "point counts); finetune-doctor reads no notebook and is given the same numbers as a "
                    "trainer_state.json",
               "M": "rules of c728eba (the fold-L round), the notebook reader of a5ee5e0; finetune-doctor reads no "
                    "notebook and is given the same numbers as a trainer_state.json",
               "N": "rules of bca727b (the fold-M round), the notebook reader of 9fbd1a8; finetune-doctor reads no "
                    "notebook and is given the same numbers as a trainer_state.json",
               "O": "rules of 42b43e1 (the fold-N round), the notebook reader of f6fd140 (its epoch fix checked on "
                    "fold O's parse only: point counts); finetune-doctor reads no notebook and is given the same "
                    "numbers as a trainer_state.json",
               "P": "rules of 3bf380d (the fold-O round), the notebook reader of 949440b (its fixes checked on fold "
                    "P's parse only: point counts and the task read); finetune-doctor reads no notebook and is given "
                    "the same numbers as a trainer_state.json",
               "R": "rules of 578c6b3 (the round on the runs both reviews of L-Q agree loratune missed), the notebook "
                    "reader of 578c6b3 (fold R's parse checked: point counts; the later reader commits change notes "
                    "only, and score R the same); finetune-doctor reads no notebook and is given the same numbers as a "
                    "trainer_state.json",
               "S": "rules of 4c2814e (the fold-R round, with the reader's task names found from fold S's parse: its "
                    "task column only); finetune-doctor reads no notebook and is given the same numbers as a "
                    "trainer_state.json",
               "U": "rules of 1ae4a4d (the fold-T round), committed while fold U's two blind reviews were being "
                    "written (they started at d5974b5) and before any of its labels was read; the rules of a3fe81c, "
                    "before the round, give every U run the same verdict; finetune-doctor reads no notebook and is "
                    "given the same numbers as a trainer_state.json",
               "V": "rules of bf66ca4 (the fold-U round); those of a3fe81c and 1ae4a4d score V the same",
               "W": "rules of 2d4a91b (the collapsed verdict); those of bf66ca4 score W the same, those of a3fe81c "
                    "23 of 25 (the fold-T round's lr-too-large guard moves FarshadAmiri to overfit)",
               "X": "rules of 2d4a91b (429e50c adds a test only); 11 runs, the session's fetch quota then spent; "
                    "the rules of a3fe81c give every X run the same verdict",
               "Y": "rules of 3bdf90c, unchanged while its two blind reviews were written (14cafbd, which scored "
                    "it, changed the bench's tables only)",
               "Z": "rules of 3bdf90c, unchanged while its two blind reviews were written; the first review's "
                    "summary, naming a few labels, arrived while the fold-Y round (e2a287c) was being tested, so Z is "
                    "scored against the rules before that round (e2a287c, committed after the score, moves no Z "
                    "verdict)",
               "AA": "rules of 173d08d (after the fold-Y and fold-Z rounds and the reader's repeated-train-loss fix), "
                     "unchanged while its two blind reviews were written (their replies gave label counts only); "
                     "6e7c2c9 committed the tables of the run before it, 295ebac the score",
               "AB": "rules of 90f7587 (the fold-AA round); 8 runs, the session's fetch quota then spent; the rules "
                     "of 173d08d, before the round, score it 6 of 8 (MarioMarkov inconclusive)",
               "AC": "rules of 968fb7d (the fold-AB round: eval-metric-unmoved, the untracked run's metric route), "
                     "unchanged while its two blind reviews were written (their replies gave label counts only); "
                     "collected in four parts by four helpers (the session's fetch quota then spent); the rules of "
                     "074a363, before the round, score it the same 18 of 25",
               "T": "rules of f3a9c26 (the fold-S round; the rules before it, 4c2814e, score T the same: no T verdict "
                    "moves); 20 runs, the session's fetch quota then spent; finetune-doctor reads no notebook and is "
                    "given the same numbers as a trainer_state.json",
               "Q": "rules of e2bbbd0 (the fold-P round; 46041a8 after it only rewraps a line), the notebook reader of "
                    "949440b (fold Q's parse checked: point counts); 18 runs, the session's fetch quota then spent; "
                    "finetune-doctor reads no notebook and is given the same numbers as a trainer_state.json",
               "J": "rules of 663c4c3, frozen before its labels (2ea1a77) were committed in the middle of the fold-I "
                    "round; that round's last two rule commits (95b7441, 4163623) were written by a reviewer who "
                    "never opened fold J (it saw J's folder names only after 4163623)"}
FOLDS = ("A", "B", *(k for k, _, _ in FRESH))  # fold names (after Z: AA, AB, ...)
RESULTS = ROOT / "bench" / "results"
FOLD_A_DATASETS = ("banking77-10", "clinc-oos-binary")  # fitted on (with the even public repos)
# labels that must never read `healthy` (unless the review accepted healthy for that run too)
UNFORGIVABLE = ("overfit-capacity", "diverged", "collapsed", "lr-too-large")
# the thresholds the fit may move (the rows that read loss-only curves, noise bands and budgets)
FITTED = ("fit_loss_over_start_max", "val_loss_rise_min", "rise_noise_min", "val_metric_drop_min", "drop_se_min",
          "slow_runs_to_fit_min", "diverged_loss_ratio", "diverged_chance_ratio",
          "late_best_fraction_min", "late_val_drop_min", "healthy_val_loss_drop_min", "steady_late_share_min",
          "healthy_gain_min", "healthy_loss_drop_min", "late_min_fraction", "plateau_late_drop_max")
GRID = (0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0)
# a threshold moves off its value only when that wins at least this many more runs of the fold (one run is
# one label's judgement call; moving for it is fitting the fold, not the rule)
MIN_GAIN_RUNS = 2
# the matrices' column order; a verdict missing here still gets a column, after these (none is dropped)
VERDICTS = ("healthy", "overfit-capacity", "underfit-capacity", "lr-too-small", "lr-too-large", "collapsed",
            "diverged", "undertrained", "inconclusive")


def reviewed_labels() -> dict:
    """tests/fixtures/external/trainer/labels.json: the labels of an independent review (made from the runs'
    numbers by a reviewer who did not see loratune's rules or verdicts); they replace the manifest's
    automatic labels."""
    path = TRAINER / "labels.json"
    return json.loads(path.read_text()) if path.is_file() else {"runs": {}, "triples": {}}


def load_corpus() -> list[dict]:
    runs = []
    m = json.loads((TRAINER / "manifest.json").read_text())
    review = reviewed_labels()
    for r in m["runs"]:
        if r["name"] not in review.get("runs", {}):
            continue  # only runs with a reviewed label count
        r = {**r, **review["runs"][r["name"]]}
        runs.append({**r, "path": str(TRAINER / r["name"]), "origin": r.get("kind", "hf-trainer"),
                     "dataset": r["dataset"]})
    pub = json.loads((PUBLIC / "manifest.json").read_text())
    repos = sorted({r["repo"] for r in pub["runs"]})
    for r in pub["runs"]:
        runs.append({**r, "path": str(PUBLIC / r["name"]), "origin": "public", "dataset": f"public:{r['repo']}",
                     "public_fold": "A" if repos.index(r["repo"]) % 2 == 0 else "B"})
    for r in runs:
        r["fold"] = (r["public_fold"] if r["origin"] == "public"
                     else "A" if r["dataset"] in FOLD_A_DATASETS else "B")
    for fold, folder, _ in FRESH:
        if (folder / "manifest.json").is_file():
            review2 = (json.loads((folder / REVIEW2).read_text())["runs"] if (folder / REVIEW2).is_file() else {})
            for r in json.loads((folder / "manifest.json").read_text())["runs"]:
                notebook = next((f for f in r.get("files", []) if f.endswith(".ipynb")), None)
                runs.append({**r, "path": str(folder / r["name"] / notebook if notebook else folder / r["name"]),
                             "origin": "public", "fold": fold, "dataset": f"public:{r['repo']}",
                             **({"review2": review2[r["name"]]} if r["name"] in review2 else {})})
    for r in runs:
        r["accept"] = r.get("accept") or [r["label"]]
    return runs


def prepare(runs: list[dict]) -> None:
    """Read every run once and compute its features (the rules are re-evaluated per threshold set)."""
    for r in runs:
        # a notebook holding several training tables: the one the manifest names
        h = read_notebook(r["path"], table=r["table_index"]) if r.get("table_index") is not None else load_run(r["path"])
        r["history"] = h
        t0 = time.perf_counter()
        r["features"] = compute_features(h.points, h.meta, h.config)
        r["features_ms"] = (time.perf_counter() - t0) * 1000


CURVE_RULES = [rule for rule in RULES if rule.scope != "compare"]


def top_finding(r: dict, thresholds: dict):
    """The finding that gives a run's verdict (None: inconclusive)."""
    findings, _ = evaluate_rules(r["features"], CURVE_RULES, thresholds)
    return next((f for f in findings if f.suppressed_by is None and f.scope == "curve"), None)


def verdict_of(r: dict, thresholds: dict) -> str:
    top = top_finding(r, thresholds)
    return top.rule_id if top else "inconclusive"


def route_table(per_run: list[dict]) -> list[dict]:
    """Per (rule, route): how often a route decided the top verdict and how often that verdict was accepted. A route
    is named by its reading (`Finding.route`: the first holding route of the rule's alternatives)."""
    acc: dict[tuple[str, str], list] = {}
    for p in per_run:
        if p.get("route") is None:
            continue
        row = acc.setdefault(tuple(p["route"]), [0, 0, []])
        row[0] += 1
        row[1] += p["ok"]
        if not p["ok"]:
            row[2].append(f"{p['fold']}:{p['name']}")
    return [{"rule": rid, "reads": why, "decided": n, "accepted": ok, "missed": miss}
            for (rid, why), (n, ok, miss) in sorted(acc.items(), key=lambda kv: (kv[0][0], -kv[1][0]))]


def score(runs: list[dict], thresholds: dict) -> tuple[float, int, int]:
    ok = bad = 0
    for r in runs:
        v = verdict_of(r, thresholds)
        ok += v in r["accept"]
        bad += v == "healthy" and r["label"] in UNFORGIVABLE and "healthy" not in r["accept"]
    return ok / max(len(runs), 1), ok, bad


def objective(runs, thresholds) -> float:
    share, _, bad = score(runs, thresholds)
    return share - 2.0 * bad / max(len(runs), 1)


def fit(runs: list[dict], passes: int = 3) -> tuple[dict, list[str]]:
    th = default_thresholds()
    log = []
    best = objective(runs, th)
    for p in range(passes):
        moved = False
        for name in FITTED:
            base = th[name]
            cands = sorted({round(base * g, 6) for g in GRID})
            scores = []
            for v in cands:
                trial = {**th, name: v}
                scores.append((objective(runs, trial), -abs(v - THRESHOLDS[name].value), v))
            top = max(scores)
            if top[0] > best + MIN_GAIN_RUNS / len(runs) - 1e-12:
                log.append(f"pass {p + 1}: {name} {base:g} -> {top[2]:g} (objective {best:.3f} -> {top[0]:.3f})")
                th[name], best, moved = top[2], top[0], True
        if not moved:
            break
    return th, log


def confusion(runs: list[dict], thresholds: dict) -> dict:
    rows: dict[str, dict[str, int]] = {}
    for r in runs:
        v = verdict_of(r, thresholds)
        rows.setdefault(r["label"], {}).setdefault(v, 0)
        rows[r["label"]][v] += 1
    return rows


def triples(thresholds: dict) -> list[dict]:
    m = json.loads((TRAINER / "manifest.json").read_text())
    review = reviewed_labels().get("triples", {})
    out = []
    for t in m.get("triples", []):
        if t["name"] not in review or not all((TRAINER / n).is_dir() for n in t["runs"]):
            continue
        t = {**t, **review[t["name"]]}
        c = compare([TRAINER / n for n in t["runs"]], thresholds=thresholds)
        # a triple under 1 noise unit on a small-SE val set now reads knobs-not-binding (not counted here)
        binding = [f.rule_id for f in c.active if f.rule_id in ("optimization-bound", "capacity-bound",
                                                                 "differences-within-noise")]
        got = binding[0] if binding else "none"
        groups = {g.knob: g.effect for g in c.groups}
        out.append({"name": t["name"], "dataset": t["dataset"], "expected": t["expected"], "got": got,
                    "ok": got == t["expected"], "effects": groups, "noise": c.features.values.get("noise"),
                    "noise_source": c.features.details.get("noise_source"), "notes": list(c.notes)})
    return out


def finetune_doctor(runs: list[dict], python: str) -> dict[str, dict]:
    if not Path(python).exists():
        return {}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        # finetune-doctor reads no notebook: it is given the same numbers as a trainer_state.json (the log_history
        # loratune reads the notebook's table as), and its answer is filed under the notebook's path
        given = {}
        for i, r in enumerate(runs):
            if r["path"].endswith(".ipynb"):
                state, _, _ = notebook_trainer_state(r["path"], r.get("table_index"))
                folder = Path(tmp) / str(i)
                folder.mkdir()
                (folder / "trainer_state.json").write_text(json.dumps(state))
                given[str((folder / "trainer_state.json").resolve())] = r["path"]
            else:
                given[str(Path(r["path"]).resolve())] = r["path"]
        res = subprocess.run([python, str(ROOT / "bench" / "finetune_doctor_adapter.py"), *given],
                             capture_output=True, text=True, timeout=600)
    out = {}
    for line in res.stdout.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        path = str(Path(row["path"]).resolve())
        out[str(Path(given.get(path, path)).resolve())] = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-fit", action="store_true", help="score the thresholds as they are in rules.py")
    ap.add_argument("--fd-python", default="/work/fd-venv/bin/python")
    args = ap.parse_args()

    runs = load_corpus()
    prepare(runs)
    fold = {k: [r for r in runs if r["fold"] == k] for k in FOLDS}
    defaults = default_thresholds()
    if args.no_fit:
        fitted_a, log_a = defaults, ["(--no-fit: the defaults in rules.py)"]
        fitted_b, log_b = defaults, []
    else:
        fitted_a, log_a = fit(fold["A"])
        fitted_b, log_b = fit(fold["B"])
    res = {
        "n_runs": len(runs), "folds": {k: len(v) for k, v in fold.items()},
        "fit_log_A": log_a, "fit_log_B": log_b,
        "thresholds_fitted_on_A": {k: fitted_a[k] for k in FITTED},
        "thresholds_fitted_on_B": {k: fitted_b[k] for k in FITTED},
        "defaults": {k: defaults[k] for k in FITTED},
        "held_out_record": {k: {"accepted": ok, "n": n, "fd_accepted": fd, "recorded_in": at,
                                "rules": next(c for f, _, c in FRESH if f == k)}
                            for k, (ok, n, fd, at) in HELD_OUT.items()},
    }
    for name, th, part in (("held_out_B_fit_A", fitted_a, fold["B"]), ("held_out_A_fit_B", fitted_b, fold["A"]),
                           ("fit_A_in_sample", fitted_a, fold["A"]), ("defaults_all", defaults, runs),
                           *((f"fresh_{k}_{how}", th, fold[k]) for k, _, _ in FRESH
                             for how, th in (("defaults", defaults), ("fit_A", fitted_a)))):
        share, ok, bad = score(part, th)
        res[name] = {"n": len(part), "accepted": ok, "share": share, "healthy_on_unforgivable": bad,
                     "confusion": confusion(part, th)}
    per_run = []
    fd = finetune_doctor(runs, args.fd_python)
    for r in runs:
        th = {"A": fitted_b, "B": fitted_a}.get(r["fold"], defaults)
        top = top_finding(r, th)
        v = top.rule_id if top else "inconclusive"
        t0 = time.perf_counter()  # read + features + rules, of the table the manifest names
        diagnose(read_notebook(r["path"], table=r["table_index"]) if r.get("table_index") is not None else r["path"],
                 thresholds=th)
        ms = (time.perf_counter() - t0) * 1000
        f = fd.get(str(Path(r["path"]).resolve()), {})
        per_run.append({"name": r["name"], "origin": r["origin"], "dataset": r["dataset"], "fold": r["fold"],
                        "label": r["label"], "accept": r["accept"], "verdict": v, "ok": v in r["accept"],
                        "fd_verdict": f.get("fd_verdict"), "fd_ok": (f.get("fd_verdict") in r["accept"]) if f else None,
                        "diagnose_ms": round(ms, 1), "reason": r.get("reason", ""), "route": [top.rule_id, top.route[0] if top.route else ""] if top else None})
        if r.get("review2"):
            a2 = r["review2"].get("accept") or [r["review2"]["label"]]
            per_run[-1].update({"label2": r["review2"]["label"], "accept2": a2, "ok2": v in a2,
                                "fd_ok2": (f.get("fd_verdict") in a2) if f else None})
    res["runs"] = per_run
    res["routes"] = route_table(per_run)
    res["triples"] = triples(fitted_a)
    res["finetune_doctor"] = {"available": bool(fd)}
    if fd:
        res["finetune_doctor"]["version"] = next((row.get("fd_version") for row in fd.values()
                                                  if row.get("fd_version")), None)
    ms = [p["diagnose_ms"] for p in per_run]
    res["diagnose_ms"] = {"median": statistics.median(ms), "max": max(ms)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "diagnose_external.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (RESULTS / "diagnose_external.md").write_text(render(res))
    print(render(res))
    return 0


def _matrix(conf: dict) -> list[str]:
    seen = {v for row in conf.values() for v in row}
    cols = [v for v in VERDICTS if v in seen] + sorted(seen - set(VERDICTS))
    lines = ["| label \\ verdict | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for lab in sorted(conf):
        lines.append(f"| {lab} | " + " | ".join(str(conf[lab].get(c, ".")) for c in cols) + " |")
    return lines


def _review2_lines(res: dict) -> list[str]:
    """Folds reviewed twice: how often the two blind reviews agree, and loratune / finetune-doctor against each."""
    twice = [p for p in res["runs"] if "label2" in p]
    if not twice:
        return []
    lines = ["", "## Folds reviewed twice, blind: the reviews' agreement and each reader against both", "",
             f"A second reviewer labelled these folds later from the same brief ({REVIEW2} beside each manifest), "
             "shown neither the first review nor loratune. 'Accepted by the other': a review's label is in the other "
             "review's accept list. loratune here is the rules as committed now (review 1's labels of the folds read "
             "so far were in-sample; review 2's labels were never fitted on).", "",
             "| fold | runs | same label | each label accepted by the other review | loratune: review 1 / review 2 / "
             "both | finetune-doctor: review 1 / review 2 / both |", "|---|---|---|---|---|---|"]
    for k in [f for f in FOLDS if any(p["fold"] == f for p in twice)] + ["all"]:
        ps = [p for p in twice if k in ("all", p["fold"])]
        mutual = sum(p["label2"] in p["accept"] and p["label"] in p["accept2"] for p in ps)
        lt = (sum(p["ok"] for p in ps), sum(p["ok2"] for p in ps), sum(p["ok"] and p["ok2"] for p in ps))
        fd = (sum(bool(p["fd_ok"]) for p in ps), sum(bool(p["fd_ok2"]) for p in ps),
              sum(bool(p["fd_ok"]) and bool(p["fd_ok2"]) for p in ps))
        lines.append(f"| {k} | {len(ps)} | {sum(p['label'] == p['label2'] for p in ps)} | {mutual} | "
                     f"{lt[0]} / {lt[1]} / {lt[2]} | {fd[0]} / {fd[1]} / {fd[2]} |")
    diff = [p for p in twice if p["label"] != p["label2"]]
    if diff:
        lines += ["", "Where the two reviews' labels differ: " + "; ".join(
            f"{p['name']} ({p['label']} / {p['label2']})" for p in diff) + "."]
    return lines


def _held_out_lines() -> list[str]:
    """The held-out record: each fresh fold as first scored (HELD_OUT), with the rules it was frozen at."""
    freeze = {k: c for k, _, c in FRESH}
    lines = ["## Held-out record: each fresh fold scored once, against rules frozen before its labels existed", "",
             "| fold | runs | rules | loratune | finetune-doctor | recorded in |", "|---|---|---|---|---|---|"]
    for k, (ok, n, fd, at) in HELD_OUT.items():
        lines.append(f"| {k} | {n} | {freeze[k]} | {ok} ({ok / n:.0%}) | {fd} | {at or '-'} |")
    order = list(HELD_OUT)  # the folds in the order they were scored (after Z: AA, AB, ...)
    for first in (order[0], RECORD_FROM):
        ks = order[order.index(first):]
        ok, n, fd = (sum(HELD_OUT[k][i] for k in ks) for i in range(3))
        lines.append(f"| **{ks[0]} to {ks[-1]}** | {n} | | **{ok} ({ok / n:.0%})** | {fd} ({fd / n:.0%}) | |")
    return lines + [""]


def render(res: dict) -> str:
    b = res["held_out_B_fit_A"]
    a = res["held_out_A_fit_B"]
    lines = ["# Diagnosis on runs loratune did not make", "",
             "Generated by `python bench/diagnose_external.py` (see its docstring for the corpus and the split).",
             "", f"Runs: {res['n_runs']} (" + ", ".join(f"fold {k} {n}" for k, n in res["folds"].items())
             + "). Thresholds fitted on fold A, scored on fold B (held out, other datasets and repositories). Folds "
             f"C to {FRESH[-1][0]}: public runs labelled blind, each scored first against rules frozen before its labels "
             "existed, never fitted on. Read after their first scoring, with the rules changed (in-sample now): "
             + ", ".join(k for k, _, _ in FRESH if k not in UNREAD) + ". Not read: "
             + (", ".join(UNREAD) + " (the held-out score of record)" if UNREAD else "none") + ".", ""]
    lines += _held_out_lines()
    for k, _, freeze in reversed(FRESH):
        c = res[f"fresh_{k}_defaults"]
        if not c["n"]:
            continue
        unf = [p for p in res["runs"] if p["fold"] == k and p["verdict"] == "healthy"
               and p["label"] in UNFORGIVABLE and "healthy" not in p["accept"]]
        fd_c = [p for p in res["runs"] if p["fold"] == k and p["fd_ok"] is not None]
        frozen = FREEZE_NOTE.get(k, f"rules frozen at {freeze} before the labels existed")
        lines += [f"## Fold {k}: fresh public runs, labelled blind ({'not read: held out' if k in UNREAD else 'in-sample'}; "
                  f"first scored against the {frozen}; this table: the rules as committed now)", "",
                  *([f"- held out, first scored: {HELD_OUT[k][0]} of {HELD_OUT[k][1]}, finetune-doctor "
                     f"{HELD_OUT[k][2]} (the record above)"] if k in HELD_OUT else []),
                  f"- accepted top verdicts: **{c['accepted']} of {c['n']} ({c['share']:.0%})**",
                  f"- `healthy` on a run labelled {' / '.join(UNFORGIVABLE)}: {c['healthy_on_unforgivable']}"
                  + (f" ({', '.join(p['name'] for p in unf)})" if unf else ""),
                  f"- with the thresholds fitted on fold A instead: {res[f'fresh_{k}_fit_A']['accepted']} of {c['n']}"]
        if fd_c:
            lines.append(f"- finetune-doctor on the same runs: {sum(bool(p['fd_ok']) for p in fd_c)} of {len(fd_c)}")
        lines += [""] + _matrix(c["confusion"]) + [""]
    lines += ["## Route precision (every run, the rules as committed: in-sample)", "",
              "Which route of a rule decided each run's top verdict (the reading the finding names first: its "
              "`why` in rules.py), and how often that verdict was accepted. A route that is often wrong is where a "
              "rule reads a curve badly.", "",
              "| rule | route (what it reads) | decided | accepted | missed |", "|---|---|---|---|---|"]
    for row in res["routes"]:
        lines.append(f"| {row['rule']} | {row['reads'] or '(no reading named)'} | {row['decided']} | {row['accepted']} "
                     f"({row['accepted'] / row['decided']:.0%}) | {', '.join(row['missed'][:4])}"
                     f"{' ...' if len(row['missed']) > 4 else ''} |")
    lines += [""]
    lines += ["## Held out (fold B, thresholds fitted on fold A)", "",
             f"- accepted top verdicts: **{b['accepted']} of {b['n']} ({b['share']:.0%})**",
             f"- `healthy` on a run labelled {' / '.join(UNFORGIVABLE)}: {b['healthy_on_unforgivable']}", ""]
    lines += _matrix(b["confusion"])
    lines += ["", "## Reverse fold (fit on B, score A)", "",
              f"- accepted: {a['accepted']} of {a['n']} ({a['share']:.0%}); `healthy` on unforgivable: "
              f"{a['healthy_on_unforgivable']}", ""]
    lines += _matrix(a["confusion"])
    ins = res["fit_A_in_sample"]
    lines += ["", f"In-sample on A with its own fit: {ins['accepted']} of {ins['n']} ({ins['share']:.0%}). "
              f"Defaults (rules.py as committed) on all runs: {res['defaults_all']['accepted']} of "
              f"{res['defaults_all']['n']} ({res['defaults_all']['share']:.0%}).", "",
              "## Thresholds fitted on fold A", "", "| threshold | default | fitted on A | fitted on B |",
              "|---|---|---|---|"]
    for k, v in res["thresholds_fitted_on_A"].items():
        lines.append(f"| {k} | {res['defaults'][k]:g} | {v:g} | {res['thresholds_fitted_on_B'][k]:g} |")
    lines += ["", "Fit log (A): " + ("; ".join(res["fit_log_A"]) or "no move improved the objective"), ""]
    lines += ["## Minimal-intervention triples (thresholds fitted on A)", "",
              "| triple | dataset | expected | verdict | lr effect | r effect | noise |", "|---|---|---|---|---|---|---|"]
    for t in res["triples"]:
        e = t["effects"]
        fmt = (lambda x: f"{x:.3f}" if isinstance(x, (int, float)) else "-")
        lines.append(f"| {t['name']} | {t['dataset']} | {t['expected']} | {t['got']}{'' if t['ok'] else ' (x)'} | "
                     f"{fmt(e.get('learning_rate'))} | {fmt(e.get('r'))} | {fmt(t['noise'])} |")
    right = sum(t["ok"] for t in res["triples"])
    lines += ["", f"Right on {right} of {len(res['triples'])} triples.", ""]
    fd = res["finetune_doctor"]
    lines += ["## Per run (A and B scored with the thresholds fitted on the other fold; C to F with the defaults)", "",
              "finetune-doctor: " + (f"version {fd.get('version')}, run from its own venv" if fd["available"]
                                     else "not available on this machine (no --fd-python)"), "",
              "| run | origin | fold | label | loratune | finetune-doctor | ms |", "|---|---|---|---|---|---|---|"]
    for p in res["runs"]:
        mark = "" if p["ok"] else " (x)"
        fdv = "-" if p["fd_verdict"] is None else p["fd_verdict"] + ("" if p["fd_ok"] else " (x)")
        lines.append(f"| {p['name']} | {p['origin']} | {p['fold']} | {p['label']} | {p['verdict']}{mark} | {fdv} | "
                     f"{p['diagnose_ms']} |")
    if fd["available"]:
        lines += ["", "## loratune vs finetune-doctor, per label (all runs)", "",
                  "| label | runs | loratune accepted | finetune-doctor accepted |", "|---|---|---|---|"]
        by: dict[str, list[dict]] = {}
        for p in res["runs"]:
            by.setdefault(p["label"], []).append(p)
        for lab, ps in sorted(by.items()):
            lines.append(f"| {lab} | {len(ps)} | {sum(p['ok'] for p in ps)} | {sum(bool(p['fd_ok']) for p in ps)} |")
    lines += _review2_lines(res)
    lines += ["", f"Diagnosis time per run (read + features + rules): median {res['diagnose_ms']['median']:.0f} ms, "
              f"max {res['diagnose_ms']['max']:.0f} ms.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
