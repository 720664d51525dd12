"""The tuning study's decision trail: one decision per seq; a resumed session that decides otherwise supersedes the
earlier session's decisions from there on, which are kept beside the trail."""

from __future__ import annotations

import json

from loratune.search.study import DecisionLog, SUPERSEDED


def _d(seq: int, kind: str, code: str) -> dict:
    return {"seq": seq, "kind": kind, "code": code, "verdict": f"{kind} {code}"}


def test_a_replay_is_not_written_twice_and_a_different_decision_supersedes(tmp_path):
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path)
    for d in (_d(0, "lr", "lr-grid-best"), _d(1, "budget", "budget-skip"), _d(2, "noise", "seed-noise-unmeasured")):
        log.append(d)
    log = DecisionLog(path)  # a resumed session
    assert log.append(_d(0, "lr", "lr-grid-best"))["verdict"] == "lr lr-grid-best"  # the same decision: replayed
    log.append(_d(1, "budget", "budget-allows"))  # a larger budget: decided otherwise at seq 1
    log.append(_d(2, "noise", "seed-noise-measured"))
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(d["seq"], d["code"]) for d in lines] == [(0, "lr-grid-best"), (1, "budget-allows"),
                                                      (2, "seed-noise-measured")]
    old = [json.loads(x) for x in (tmp_path / SUPERSEDED).read_text().splitlines()]
    assert [(d["seq"], d["code"]) for d in old] == [(1, "budget-skip"), (2, "seed-noise-unmeasured")]
    assert all("decided otherwise at seq 1" in d["superseded_why"] for d in old)


def test_lines_that_are_not_decisions_are_skipped(tmp_path):
    path = tmp_path / "decisions.jsonl"
    path.write_text('not json\n[1, 2]\n7\n' + json.dumps(_d(0, "lr", "x")) + "\n", encoding="utf-8")
    assert [d["code"] for d in DecisionLog(path).entries] == ["x"]


def test_the_same_code_keeping_another_trial_is_not_a_replay(tmp_path):
    """A resume whose final stage kept #5 where the earlier session kept #2 decided the same kind and code, and the
    trail kept the earlier "keep #2" (the study's pick was #5)."""
    path = tmp_path / "decisions.jsonl"
    DecisionLog(path).append({**_d(0, "final", "final-reuse"), "trials": [2], "move": "keep #2"})
    log = DecisionLog(path)
    got = log.append({**_d(0, "final", "final-reuse"), "trials": [5], "move": "keep #5"})
    assert got["trials"] == [5]
    assert [(d["trials"], d["move"]) for d in DecisionLog(path).entries] == [([5], "keep #5")]
    old = [json.loads(x) for x in (tmp_path / SUPERSEDED).read_text().splitlines()]
    assert [(d["trials"], d["move"]) for d in old] == [([2], "keep #2")]
    # the same decision whose texts differ (reworded, or the budget left it counts) is still a replay
    again = DecisionLog(path)
    assert again.append({**_d(0, "final", "final-reuse"), "trials": [5], "move": "keep trial #5",
                         "verdict": "3 trials left"})["verdict"] == "final final-reuse"


def test_a_decision_written_before_codes_existed_replays_as_the_same_code_as_its_kind(tmp_path):
    """A study made by an older version holds decisions without a `code`: a resume compared None with today's code
    (the kind, for a decision without its own) and moved the whole trail to SUPERSEDED from seq 0, the plan and the
    space it decided again included."""
    path = tmp_path / "decisions.jsonl"
    old = [{k: v for k, v in {**_d(i, kind, kind), "trials": t}.items() if k != "code"}  # as the old version wrote
           for i, (kind, t) in enumerate((("trial-plan", []), ("space", []), ("stop", []), ("pick", [2])))]
    path.write_text("".join(json.dumps(d) + "\n" for d in old), encoding="utf-8")
    log = DecisionLog(path)
    assert log.append({**_d(0, "trial-plan", "trial-plan"), "trials": []}) == old[0]  # replayed, as written
    assert log.append({**_d(1, "space", "space"), "trials": []}) == old[1]
    log.append({**_d(2, "prune", "trial-pruned"), "trials": [4]})  # a larger budget: decided otherwise from here
    assert [(d["seq"], d["kind"]) for d in DecisionLog(path).entries] == [(0, "trial-plan"), (1, "space"),
                                                                         (2, "prune")]
    moved = [json.loads(x) for x in (tmp_path / SUPERSEDED).read_text().splitlines()]
    assert [(d["seq"], d["kind"]) for d in moved] == [(2, "stop"), (3, "pick")]
    # a code of its own is compared as written: another code at that seq is another decision
    assert DecisionLog(path).append({**_d(0, "trial-plan", "trial-plan-other"), "trials": []})["code"] \
        == "trial-plan-other"
