"""Word error rate: how far a transcript is from the known text (tests and benchmarks).

Both texts are normalised the same way (lower case, punctuation dropped except apostrophes
inside words, hyphens split words), then aligned by the word-level Levenshtein distance:
``WER = (substitutions + deletions + insertions) / words in the reference``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def words(text: str) -> list[str]:
    """``text`` as normalised words: ``"Hello, world-wide!"`` → ``["hello", "world", "wide"]``."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def distances_to_prefixes(ref: list[str], hyp: list[str]) -> list[int]:
    """Word-level Levenshtein distance of ``ref`` to every prefix ``hyp[:j]`` (the last row
    of the dynamic-programming table)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions, deletions, insertions cost 1)."""
    return distances_to_prefixes(ref, hyp)[-1]


def wer(reference: str | Iterable[str], hypothesis: str | Iterable[str]) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` (texts, or lists of texts
    joined with spaces). An empty reference gives 0.0 for an empty hypothesis, else 1.0."""
    ref = words(reference if isinstance(reference, str) else " ".join(reference))
    hyp = words(hypothesis if isinstance(hypothesis, str) else " ".join(hypothesis))
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)
