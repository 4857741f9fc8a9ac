"""The one tokenizer shared by the lexical index and the built-in embedder.

Lowercase (``str.casefold``, so German ``ß`` matches ``ss``), runs of Unicode word characters,
minus a small English stopword list. No stemming: BM25 stays exact-term, and the embedder's
character n-grams already bring ``paint``/``painting`` close. Both views must tokenize alike,
otherwise a word could count lexically and not semantically; hence one module.
"""

from __future__ import annotations

import re

__all__ = ["STOPWORDS", "tokenize"]

_WORD = re.compile(r"\w+")

# Function words that carry no retrieval signal, including question words: agents' queries are
# often questions ("when did ... ?") and the question word would otherwise match every turn
# that happens to contain it.
_STOPWORD_TEXT = """
    a about after all also am an and any are as at be been before being but by can could
    did do does doing for from had has have having he her here hers him his how i if in into
    is it its just me my no nor not of on or our ours out she so some such than that the their
    theirs them then there these they this those to too up us very was we were what when where
    which while who whom why will with would you your yours s t ll re ve d m
"""
STOPWORDS: frozenset[str] = frozenset(_STOPWORD_TEXT.split())


def tokenize(text: str) -> list[str]:
    """Split ``text`` into lowercase word tokens without stopwords, in order."""
    return [w for w in _WORD.findall(text.casefold()) if w not in STOPWORDS]
