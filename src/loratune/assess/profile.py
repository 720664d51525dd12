"""Profiles of the data: each split's shape and counts, label conflicts and noise (all splits pooled),
and the shift of validation and test from train."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from loratune.assess.records import (AssessThresholds, ConflictExample, Conflicts, LabelShare, Leakage, Noise,
                                     PairCount, RowRef, SplitNoise, SplitProfile, SplitShift)
from loratune.assess.stats import js_critical, js_divergence, ks_critical, ks_statistic, length_stats
from loratune.assess.text import has_encoding_damage, has_non_printable, normalise, shorten, words
from loratune.data import Split, has_visible, text_key

def profile_split(split: Split, *, thresholds: AssessThresholds = AssessThresholds(),
                  token_lengths: Sequence[int] | None = None, max_length: int | None = None,
                  unk_tokens: int | None = None, label_space: Sequence[str] | None = None) -> SplitProfile:
    """Shape, counts, long tail, imbalance, multi-label stats and length distributions of one split."""
    counts = split.label_counts()
    if label_space is not None and split.name == "train":
        for lab in label_space:
            counts.setdefault(lab, 0)
    values = sorted(counts.values())
    nonzero = [v for v in values if v > 0] or [0]
    tail = tuple(sorted(k for k, v in counts.items() if v < thresholds.long_tail_count)) \
        if split.name == "train" else ()
    sizes = Counter(len(labs) for labs in split.labels)
    tokens = trunc = unk = None
    if token_lengths is not None:
        tokens = length_stats(token_lengths)
        if max_length is not None and len(token_lengths):
            trunc = float(np.mean(np.asarray(token_lengths) > max_length))
        if unk_tokens is not None:
            unk = unk_tokens / max(1, int(np.sum(token_lengths)))
    return SplitProfile(
        name=split.name, rows=len(split), classes=sum(1 for v in values if v > 0),
        count_min=int(min(nonzero)), count_median=float(np.median(nonzero)), count_max=int(max(nonzero)),
        imbalance_ratio=float(max(nonzero) / min(nonzero)) if min(nonzero) > 0 else 0.0,
        long_tail_classes=tail, long_tail_share=len(tail) / max(1, len(counts)),
        multi_label_rows=sum(1 for labs in split.labels if len(labs) > 1),
        unlabelled_rows=sum(1 for labs in split.labels if not labs),
        label_set_sizes=dict(sorted(sizes.items())),
        chars=length_stats([len(t) for t in split.texts]),
        words=length_stats([len(words(t)) for t in split.texts]),
        tokens=tokens, truncated_share=trunc, unk_rate=unk,
        counts=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


# ---------------------------------------------------------------------------------------------
# label consistency and duplicates (all splits pooled)


@dataclass
class TextPool:
    """Rows of every split keyed by normalised text (`key`: assess.text.normalise, or a stricter key such as
    assess.sft's for open completions); the key find_noise's duplicates and leakage use too."""

    refs: list[RowRef]
    by_norm: dict[str, list[int]]  # normalised text -> indices into refs
    key: Callable[[str], str] = normalise

    @classmethod
    def of(cls, splits: Mapping[str, Split], key: Callable[[str], str] = normalise) -> "TextPool":
        refs, by = [], defaultdict(list)
        for name, sp in splits.items():
            for i, (t, labs) in enumerate(zip(sp.texts, sp.labels)):
                by[key(t)].append(len(refs))
                refs.append(RowRef(name, i, t, tuple(labs)))
        return cls(refs, dict(by), key)

    def text_key(self, text: str) -> str:
        """data.text_key's rule under this pool's key: a text the key makes empty keyed by itself."""
        return text_key(text, self.key)


def _label_key(labels: Sequence[str]) -> str:
    """A label set as assess names it (its conflict pairs): each label by listing.label_text's one rule, joined by
    '+'; no label reads NO_LABEL (a label set was printed '"(none)" / pin' when it went through label_text whole)."""
    from loratune.listing import NO_LABEL, label_text

    return "+".join(map(label_text, sorted(labels))) if labels else NO_LABEL


# the char n-gram neighbour search compares texts pairwise (brute force: no index keeps cosine kNN on sparse n-grams
# exact and fast), so its cost grows with queries x texts: 25k rows took 90 s and 2.2 GB when every text was queried.
# Past this many comparisons a deterministic sample of texts is queried (each still against every text, so a near
# copy is found whenever either side is in the sample); near-conflict and near-leak counts are then lower bounds, and
# assess says so. 64M is about 8,000 texts all queried: a few seconds
NEIGHBOUR_COMPARISONS_MAX = 64_000_000
NEIGHBOUR_QUERIES_MIN = 1_000  # past ~64,000 texts the sample stays this size: cost linear in the texts
NEIGHBOUR_SAMPLE_SEED = 0


def neighbour_queries(n: int) -> int:
    """How many of n unique texts char_neighbours queries (all of them up to NEIGHBOUR_COMPARISONS_MAX)."""
    if n * n <= NEIGHBOUR_COMPARISONS_MAX:
        return n
    return min(n, max(NEIGHBOUR_QUERIES_MIN, NEIGHBOUR_COMPARISONS_MAX // n))


def neighbour_sample_note(n: int) -> str | None:
    """assess's note when char_neighbours sampled its queries, else None."""
    q = neighbour_queries(n)
    if q >= n:
        return None
    return (f"near-duplicate and near-leak checks queried a fixed sample of {q:,} of {n:,} unique texts (each against "
            f"all texts; cost capped at {NEIGHBOUR_COMPARISONS_MAX:,} comparisons): near-conflict pairs and near-leak "
            "rows are lower bounds")


# a text whose k neighbours are all near copies may have more past them: 6 validation copies of one train text filled
# each other's 5 places and the train text was never seen (near leakage 0). Such rows are asked again for twice as
# many neighbours, up to this many (beyond it, counts are lower bounds)
NEIGHBOURS_GROWN_MAX = 64


def char_neighbours(texts: list[str], k: int, min_similarity: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each text, its k nearest texts (itself included) under the cosine of sublinear char 3-4-gram
    counts: (similarity, index). No IDF: a surface similarity that does not depend on the corpus size.

    A text whose k-th neighbour is still at or above `min_similarity` (the lowest threshold a reader applies) gets
    more neighbours, doubling up to NEIGHBOURS_GROWN_MAX, so every near copy of it is listed; the other rows are
    padded with (0.0, itself).

    Past NEIGHBOUR_COMPARISONS_MAX only a deterministic sample of texts is queried; the others get (0.0, itself)
    rows, which every reader skips (a text is never its own near copy, and 0 is below any similarity threshold)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neighbors import NearestNeighbors

    if len(texts) < 2:
        return np.zeros((len(texts), 0)), np.zeros((len(texts), 0), int)
    X = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 4), sublinear_tf=True, use_idf=False,
                        dtype=np.float32).fit_transform(texts)
    n = len(texts)
    grow = k >= 1  # 0 neighbours asked: the text itself alone, never grown (its self-match is always a "near copy")
    k = min(k + 1, n)
    nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(X)
    q = neighbour_queries(n)
    rows = np.arange(n) if q >= n else np.sort(np.random.default_rng(NEIGHBOUR_SAMPLE_SEED).choice(n, q, replace=False))
    dist, found = nn.kneighbors(X[rows])
    found_s = 1.0 - dist
    while grow and min_similarity is not None and k < min(n, NEIGHBOURS_GROWN_MAX + 1):
        full = np.flatnonzero(found_s[:, -1] >= min_similarity)  # every listed neighbour a near copy: maybe more
        if not len(full):
            break
        k = min(n, NEIGHBOURS_GROWN_MAX + 1, 2 * k)
        pad = k - found_s.shape[1]
        found_s = np.hstack([found_s, np.zeros((len(rows), pad))])
        found = np.hstack([found, np.repeat(rows[:, None], pad, axis=1)])
        dist, more = nn.kneighbors(X[rows[full]], n_neighbors=k)
        found_s[full], found[full] = 1.0 - dist, more
    if q >= n:
        return found_s, found
    sims, idx = np.zeros((n, k)), np.repeat(np.arange(n)[:, None], k, axis=1)
    sims[rows], idx[rows] = found_s, found
    return sims, idx


def find_conflicts(pool: TextPool, thresholds: AssessThresholds,
                   neighbours: tuple[np.ndarray, np.ndarray], uniq: list[str]) -> Conflicts:
    """Exact conflicts (one normalised text, several label sets) and near ones (char n-gram neighbours)."""
    exact_pairs: Counter = Counter()
    near_pairs: Counter = Counter()
    examples: list[ConflictExample] = []
    exact_groups = exact_rows = 0
    main_label: dict[str, str] = {}
    for n, idxs in pool.by_norm.items():
        keys = Counter(_label_key(pool.refs[i].labels) for i in idxs)
        main_label[n] = keys.most_common(1)[0][0]
        if not n or len(keys) < 2:
            continue
        exact_groups += 1
        exact_rows += len(idxs)
        ks = sorted(keys)
        for x in range(len(ks)):
            for y in range(x + 1, len(ks)):
                exact_pairs[(ks[x], ks[y])] += 1
        if len(examples) < thresholds.max_examples:
            seen, rows = set(), []
            for i in idxs:  # one row per label set
                key = _label_key(pool.refs[i].labels)
                if key not in seen:
                    seen.add(key)
                    rows.append(pool.refs[i])
            examples.append(ConflictExample("exact", 1.0, tuple(rows)))
    near = 0
    near_examples: list[ConflictExample] = []
    done: set[tuple[int, int]] = set()  # kNN is not symmetric: count each pair once, whichever side found it
    sims, idx = neighbours
    for a in range(len(uniq)):
        for s, b in zip(sims[a], idx[a]):
            b = int(b)
            pair = (min(a, b), max(a, b))
            if a == b or pair in done or s < thresholds.near_duplicate_similarity or not uniq[a] or not uniq[b]:
                continue
            done.add(pair)
            la, lb = main_label[uniq[a]], main_label[uniq[b]]
            if la == lb:
                continue
            near += 1
            near_pairs[tuple(sorted((la, lb)))] += 1
            near_examples.append(ConflictExample(
                "near", round(float(s), 4),
                (pool.refs[pool.by_norm[uniq[a]][0]], pool.refs[pool.by_norm[uniq[b]][0]])))
    near_examples.sort(key=lambda e: -e.similarity)
    examples.extend(near_examples[: thresholds.max_examples])
    return Conflicts(
        exact_groups=exact_groups, exact_rows=exact_rows, near_pairs=near,
        near_threshold=thresholds.near_duplicate_similarity,
        pairs=tuple(PairCount(a, b, c, exact_pairs[(a, b)], near_pairs[(a, b)])
                    for (a, b), c in sorted((exact_pairs + near_pairs).items(), key=lambda kv: (-kv[1], kv[0]))),
        examples=tuple(examples),
    )


def find_noise(splits: Mapping[str, Split], pool: TextPool, thresholds: AssessThresholds,
               neighbours: tuple[np.ndarray, np.ndarray], uniq: list[str]) -> Noise:
    """Empty/short/non-text rows, encoding damage, non-printables, duplicates, cross-split leakage."""
    out = []
    for name, sp in splits.items():
        counts = Counter()
        ex: dict[str, list[str]] = defaultdict(list)
        seen: set[tuple[str, str]] = set()

        def hit(kind: str, text: str) -> None:
            counts[kind] += 1
            if len(ex[kind]) < thresholds.max_examples:
                ex[kind].append(shorten(text))

        for t, labs in zip(sp.texts, sp.labels):
            stripped = "".join(t.split())
            if not has_visible(t):  # the test training refuses an empty text by (spaces, controls, zero-widths)
                hit("empty", t)
            elif len(stripped) < thresholds.short_chars:
                hit("very_short", t)
            if stripped and not any(ch.isalpha() for ch in stripped):
                hit("no_letters", t)
            if has_encoding_damage(t):
                hit("encoding_damage", t)
            if has_non_printable(t):
                hit("non_printable", t)
            # a text of symbols or punctuation only ("👍", "!!") normalises to "": keyed by itself (spaces
            # collapsed), or every such text counted as a duplicate of the first
            key = (pool.text_key(t), _label_key(labs))
            if key in seen:
                hit("duplicate_rows", t)
            seen.add(key)
        out.append(SplitNoise(name, counts["empty"], counts["very_short"], counts["no_letters"],
                              counts["encoding_damage"], counts["non_printable"], counts["duplicate_rows"],
                              {k: tuple(v) for k, v in ex.items()}))

    # cross-split: exact (normalised) copies, and near copies among the char n-gram neighbours
    splits_of: dict[str, set[str]] = {n: {pool.refs[i].split for i in idxs} for n, idxs in pool.by_norm.items()}
    uid = {u: k for k, u in enumerate(uniq)}
    sims, nidx = neighbours
    names = list(splits)
    leaks = []
    leaked: set[tuple[str, int]] = set()  # (split, row) with a copy in some earlier split, each row once
    near_leaked: set[tuple[str, int]] = set()
    for x in range(len(names)):
        for y in range(x + 1, len(names)):
            src, dst = names[x], names[y]
            rows = near_rows = 0
            leak_ex: list[str] = []
            near_ex: list[str] = []
            for i, t in enumerate(splits[dst].texts):
                n = pool.key(t)
                if not n:
                    continue
                if src in splits_of[n]:
                    rows += 1
                    leaked.add((dst, i))
                    if len(leak_ex) < thresholds.max_examples:
                        leak_ex.append(shorten(t))
                    continue
                k = uid[n]
                near = next((uniq[int(j)] for s, j in zip(sims[k], nidx[k]) if int(j) != k
                             and s >= thresholds.near_leak_similarity and src in splits_of[uniq[int(j)]]), None)
                if near is not None:
                    near_rows += 1
                    near_leaked.add((dst, i))
                    if len(near_ex) < thresholds.max_examples:
                        near_ex.append(near_example(splits[dst], i, src, pool, near))
            leaks.append(Leakage(src, dst, rows, rows / max(1, len(splits[dst])), near_rows, tuple(leak_ex),
                                 tuple(near_ex)))
    return Noise(tuple(out), tuple(leaks), len(leaked), len(near_leaked))


def near_example(split: Split, i: int, src: str, pool: TextPool, near: str) -> str:
    """A near copy as the user can find it: the row by its file and line (Split.where; a carved validation split's
    rows by the train file's lines), and the copy by its text as written (the first row of `src` that normalises to
    `near`). 'test row #3' was neither test.csv's line 4 nor a place in a carved split, which has no file."""
    copy = next((pool.refs[r].text for r in pool.by_norm.get(near, ()) if pool.refs[r].split == src), near)
    return (f"{split.name} '{split.file}' {split.where(i)} {shorten(split.texts[i], 60)!r} ~ "
            f"{src} {shorten(copy, 60)!r}")


# ---------------------------------------------------------------------------------------------
# shift


def measure_shift(train: Split, other: Split, *, train_lengths: Sequence[int] | None = None,
                  other_lengths: Sequence[int] | None = None, top: int = 3,
                  alpha: float = AssessThresholds.shift_alpha) -> SplitShift:
    """`other` against train; `alpha`: the chance a random split of these sizes reaches the critical values."""
    tc, oc = train.label_counts(), other.label_counts()
    js, per = js_divergence(tc, oc)
    tn, on = max(1, sum(tc.values())), max(1, sum(oc.values()))
    top_labels = tuple(LabelShare(k, tc.get(k, 0) / tn, oc.get(k, 0) / on)
                       for k, _ in sorted(per.items(), key=lambda kv: -kv[1])[:top] if per[k] > 0)
    vocab = {w for t in train.texts for w in words(t)}
    toks = [w for t in other.texts for w in words(t)]
    types_ = set(toks)
    oov_tok = sum(1 for w in toks if w not in vocab) / max(1, len(toks))
    oov_type = sum(1 for w in types_ if w not in vocab) / max(1, len(types_))
    if train_lengths is not None and other_lengths is not None:
        unit, a, b = "tokens", list(train_lengths), list(other_lengths)
    else:
        unit, a, b = "words", [len(words(t)) for t in train.texts], [len(words(t)) for t in other.texts]
    js_crit, ks_crit = js_critical(tc, oc, alpha), ks_critical(a, b, alpha)
    return SplitShift(
        split=other.name, js_divergence=js, top_labels=top_labels,
        unseen_labels=dict(Counter(lab for labs in other.labels for lab in labs if lab not in tc).most_common()),
        missing_labels=tuple(sorted(k for k in tc if k not in oc)),
        oov_token_rate=oov_tok, oov_type_rate=oov_type, length_unit=unit,
        length_mean_train=float(np.mean(a)) if a else 0.0, length_mean_split=float(np.mean(b)) if b else 0.0,
        length_ks=ks_statistic(a, b), js_critical=js_crit.value, length_ks_critical=ks_crit.value,
        js_critical_by=js_crit.by, length_ks_critical_by=ks_crit.by,
    )
