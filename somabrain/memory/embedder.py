"""Text embedders: the ``Embedder`` protocol and the built-in feature-hashing embedder.

The built-in ``HashingEmbedder`` needs no download and no training, and is deterministic across
processes and machines (it hashes with keyed BLAKE2b, never Python's salted ``hash``), so a
replayed log rebuilds bit-identical vectors. It embeds a text as the signed feature-hashing sum
of three feature families, chosen because each repairs a weakness of the others:

* word unigrams (weight 1): the topical core;
* word bigrams (weight ``bigram_weight``): a little word order ("ice cream" is not "cream ice");
* character trigrams of each word with boundary marks (``char_weight`` / sqrt(count) each, so
  every word gets the same n-gram mass whatever its length): morphology and typos,
  ``painting`` shares most n-grams with ``painted``.

The weights (1, 0.5, 1.5) were picked on LoCoMo (``benchmarks/recall.py --quality``): hit@10
of the semantic view alone went from 0.36 (no n-grams) to 0.43, and of the hybrid from 0.63
to 0.65.

Why 256 dimensions (the default): recall at 100k memories is an exact matrix-vector product
whose cost is linear in ``dim`` (~2 ms for 100k x 256 float32 on the 2-core reference machine,
~3.2 ms at 384), and the budget for the whole hybrid recall is a few milliseconds. Fewer buckets
mean more hash collisions: LoCoMo hit@10 of the semantic view alone is 0.36 at 128 dims, 0.40
at 192, 0.43 at 256 and 0.46 at 384, while the hybrid recall peaks at 256 (0.635, 0.643,
0.652, 0.642). 256 keeps the matrix at 1 KiB per memory (100 MiB at 100k).

A real sentence model (all-MiniLM-L6-v2, 384 dims) can replace it: anything with ``dim`` and
``embed`` satisfies the protocol.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .text import tokenize

__all__ = ["DEFAULT_DIM", "Embedder", "HashingEmbedder"]

DEFAULT_DIM = 256

# Texts embedded per bincount call: bounds the dense float64 scratch to chunk * dim * 8 bytes.
_CHUNK = 2048


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension."""

    @property
    def dim(self) -> int:
        """The dimension of every vector ``embed`` returns."""
        ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed a batch: shape ``(len(texts), dim)``, rows of norm 1 (or 0 for empty text)."""
        ...


_Features = tuple[tuple[int, ...], tuple[float, ...]]


class HashingEmbedder:
    """Deterministic feature-hashing embedder (see the module docstring for the features)."""

    def __init__(
        self,
        dim: int = DEFAULT_DIM,
        *,
        bigram_weight: float = 0.5,
        char_weight: float = 1.5,
        char_ngram: int = 3,
        seed: str = "somabrain-hash-v1",
        cache_size: int = 262_144,
    ) -> None:
        if dim < 8:
            raise ValueError(f"dim must be at least 8, got {dim}")
        if char_ngram < 2:
            raise ValueError(f"char_ngram must be at least 2, got {char_ngram}")
        self._dim = dim
        self._bigram_weight = float(bigram_weight)
        self._char_weight = float(char_weight)
        self._n = char_ngram
        self._key = hashlib.blake2b(seed.encode("utf-8"), digest_size=32).digest()
        #: The arguments that rebuild an embedder giving the same vectors (``search_worker``).
        self.settings: dict[str, Any] = {
            "dim": dim,
            "bigram_weight": self._bigram_weight,
            "char_weight": self._char_weight,
            "char_ngram": char_ngram,
            "seed": seed,
        }
        # Hashing is the slow part; vocabularies are Zipfian, so caching per distinct word and
        # bigram makes embedding cost mostly dictionary lookups. Cleared wholesale when full:
        # results do not depend on the cache, only speed does.
        self._cache_size = cache_size
        self._words: dict[str, _Features] = {}
        self._bigrams: dict[tuple[str, str], tuple[int, float]] = {}

    @property
    def dim(self) -> int:
        return self._dim

    def __repr__(self) -> str:
        return f"HashingEmbedder(dim={self._dim})"

    def _hash(self, feature: str) -> tuple[int, float]:
        digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8, key=self._key).digest()
        h = int.from_bytes(digest, "little")
        # Signed hashing: collisions cancel in expectation instead of piling up.
        return h % self._dim, (1.0 if h >> 63 else -1.0)

    def _word_features(self, word: str) -> _Features:
        feats = self._words.get(word)
        if feats is not None:
            return feats
        idx, sign = self._hash("w\x00" + word)
        cols = [idx]
        vals = [sign]
        padded = f"<{word}>"
        n = self._n
        grams = (
            [padded[i : i + n] for i in range(len(padded) - n + 1)] if len(padded) > n else [padded]
        )
        w = self._char_weight / math.sqrt(len(grams))
        for gram in grams:
            gi, gs = self._hash("c\x00" + gram)
            cols.append(gi)
            vals.append(gs * w)
        feats = (tuple(cols), tuple(vals))
        if len(self._words) >= self._cache_size:
            self._words.clear()
        self._words[word] = feats
        return feats

    def _bigram_feature(self, pair: tuple[str, str]) -> tuple[int, float]:
        feat = self._bigrams.get(pair)
        if feat is None:
            idx, sign = self._hash("b\x00" + pair[0] + "\x00" + pair[1])
            feat = (idx, sign * self._bigram_weight)
            if len(self._bigrams) >= self._cache_size:
                self._bigrams.clear()
            self._bigrams[pair] = feat
        return feat

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts`` in one pass: shape ``(len(texts), dim)``, float32, L2-normalised."""
        return self.embed_tokens([tokenize(t) for t in texts])

    def embed_tokens(self, token_lists: Sequence[Sequence[str]]) -> npt.NDArray[np.float32]:
        """``embed`` for texts already split by ``text.tokenize`` (saves tokenizing twice
        when the caller also indexes the tokens lexically, as ``TenantMemory`` does)."""
        if len(token_lists) == 1:  # a query: one bincount, no row bookkeeping
            cols: list[int] = []
            vals: list[float] = []
            self._features(token_lists[0], cols, vals)
            out = np.bincount(cols, weights=vals, minlength=self._dim).astype(np.float32)[None, :]
        else:
            out = np.zeros((len(token_lists), self._dim), dtype=np.float32)
            for start in range(0, len(token_lists), _CHUNK):
                chunk = token_lists[start : start + _CHUNK]
                out[start : start + len(chunk)] = self._embed_chunk(chunk)
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))  # 5x faster than linalg.norm here
        np.divide(out, norms[:, None], out=out, where=norms[:, None] > 0)
        return out

    def _features(self, tokens: Sequence[str], cols: list[int], vals: list[float]) -> None:
        """Append the (bucket, signed weight) features of one text to ``cols`` and ``vals``."""
        words = self._words
        for tok in tokens:
            # Cache hits inline: this loop runs once per token of every memory.
            feats = words.get(tok) or self._word_features(tok)
            cols.extend(feats[0])
            vals.extend(feats[1])
        if self._bigram_weight != 0.0:
            bigrams = self._bigrams
            for pair in itertools.pairwise(tokens):
                feat = bigrams.get(pair) or self._bigram_feature(pair)
                cols.append(feat[0])
                vals.append(feat[1])

    def _embed_chunk(self, token_lists: Sequence[Sequence[str]]) -> npt.NDArray[np.float64]:
        cols: list[int] = []
        vals: list[float] = []
        counts: list[int] = []
        for tokens in token_lists:
            before = len(cols)
            self._features(tokens, cols, vals)
            counts.append(len(cols) - before)
        n = len(token_lists)
        if not cols:
            return np.zeros((n, self._dim))
        rows = np.repeat(np.arange(n, dtype=np.int64), counts)
        flat = rows * self._dim + np.asarray(cols, dtype=np.int64)
        dense = np.bincount(flat, weights=np.asarray(vals), minlength=n * self._dim)
        return dense.reshape(n, self._dim).astype(np.float64, copy=False)
