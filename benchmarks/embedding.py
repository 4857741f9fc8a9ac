"""Embedding benchmark: sentences per second of MiniLM on onnxruntime against torch, with the
built-in hashing embedder for reference.

What it measures (one process, one run, repeats interleaved: every embedder embeds the same
texts in each round, so machine noise hits them alike):

* ``builtin``: ``HashingEmbedder`` (the default embedder: feature hashing, no model);
* ``torch``: ``minilm.MiniLMEmbedder``, all-MiniLM-L6-v2 through sentence-transformers;
* ``onnx``: ``minilm.OnnxMiniLMEmbedder``, the same model exported to ONNX, on onnxruntime with
  the ``tokenizers`` library (no torch);

each at ``batch1`` (one text per call: a recall's query) and ``batch64`` (calls of 64 texts:
what ``embedding.BatchingEmbedder`` gathers from concurrent writes). Texts: LoCoMo's dialog
turns (``Speaker: text``) when the file is beside the repository (``--data``), else seeded
synthetic sentences of similar lengths. Both models run with the node's defaults (``--threads
0``: the libraries' own, one intra-op thread per core).

Also printed: how long each took to load (for ``onnx``, whether the ONNX export had to be made
first: a node's first start), and ``agreement``: the smallest cosine between the two runtimes'
vectors of the same text (they must agree: > 0.9999).

Ratios: ``onnx_vs_torch.batch1`` and ``.batch64`` = onnx sentences/s / torch sentences/s
(target >= 1.5 for both); ``builtin_vs_<model>.<batch>`` = how many times faster the hashing
embedder is than each model.

    python benchmarks/embedding.py --quick --json /tmp/embedding.json
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``somabrain`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    Measurement,
    Target,
    best_of,
    parse_args,
    print_ratios,
    print_results,
    ratio,
    write_json,
)
from somabrain.memory import HashingEmbedder

BENCHMARK = "embedding"
EMBEDDERS = ("builtin", "torch", "onnx")
BATCHES = (1, 64)
TARGETS = (Target("onnx_vs_torch.batch1", 1.5), Target("onnx_vs_torch.batch64", 1.5))
DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / "locomo-dev.json"
)

_VOCABULARY = (
    "i we you she he they went saw bought met talked about the a my our new old little big "
    "dog cat park school work friend sister brother painting music book trip beach garden "
    "yesterday today last week weekend because really great happy tired support group class "
    "camping hiking dinner birthday concert museum project job interview adopted started"
)


def corpus(data: Path | None, count: int, seed: int = 7) -> tuple[list[str], str]:
    """``count`` texts and where they came from."""
    if data is not None and data.exists():
        from benchmarks.locomo import load_conversations

        turns = [m.content for c in load_conversations(data) for m in c.memories]
        if turns:
            random.Random(seed).shuffle(turns)
            return [turns[i % len(turns)] for i in range(count)], f"LoCoMo turns ({data.name})"
    rng = random.Random(seed)
    words = _VOCABULARY.split()
    texts = [
        "Speaker: " + " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))
        for _ in range(count)
    ]
    return texts, "synthetic sentences (5-40 words)"


def _timed(embed: Callable[[Sequence[str]], Any], texts: Sequence[str], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        embed(texts[i : i + batch])
    return time.perf_counter() - start


def load(name: str, threads: int, cache_dir: Path | None) -> tuple[Any, str]:
    """The embedder and a note on its loading (seconds; for onnx, whether it was exported)."""
    started = time.perf_counter()
    note = ""
    if name == "builtin":
        embedder: Any = HashingEmbedder()
    elif name == "torch":
        from somabrain.memory.minilm import MiniLMEmbedder

        embedder = MiniLMEmbedder(threads=threads)
    elif name == "onnx":
        from somabrain.memory.minilm import OnnxMiniLMEmbedder
        from somabrain.memory.minilm_export import export_paths, read_export

        cached = read_export(export_paths(cache_dir)) is not None
        embedder = OnnxMiniLMEmbedder(threads=threads, cache_dir=cache_dir)
        note = ", export found in the cache" if cached else ", export made now (first use)"
    else:
        raise ValueError(f"unknown embedder {name!r}")
    return embedder, f"loaded in {time.perf_counter() - started:.1f} s{note}"


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embedders", default=",".join(EMBEDDERS), help="comma-separated")
    parser.add_argument("--count", type=int, default=None, help="texts per repeat at batch 64")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement")
    parser.add_argument("--threads", type=int, default=0, help="model threads (0: default)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the export is kept")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LoCoMo JSON file")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args((__doc__ or "").split("\n\n")[0], argv, configure=_configure)
    names = [n.strip() for n in args.embedders.split(",") if n.strip()]
    for name in names:
        if name not in EMBEDDERS:
            raise SystemExit(f"unknown embedder {name!r} (choose from {', '.join(EMBEDDERS)})")
    count = args.count or (128 if args.quick else 1024)
    repeats = args.repeats or (3 if args.quick else 5)
    # One text per call is slow for the models: a quarter as many texts keeps rounds even.
    counts = {1: max(1, count // 4), 64: count}
    texts, source = corpus(args.data, count)

    embedders: dict[str, Any] = {}
    notes: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            embedders[name], notes[name] = load(name, args.threads, args.cache_dir)
        except ImportError as exc:
            skipped[name] = f"the minilm extra is not installed ({exc})"
        except Exception as exc:  # a broken export, say: report it, measure the rest
            skipped[name] = f"{type(exc).__name__}: {exc}"
    for embedder in embedders.values():  # warm-up: first calls allocate and compile
        embedder.embed(texts[:64])
        embedder.embed(texts[:1])

    measurements = {
        (name, batch): Measurement(
            f"{name}.batch{batch}", counts[batch], unit="sentences/s", note=notes[name]
        )
        for name in embedders
        for batch in BATCHES
    }
    for _ in range(repeats):
        for batch in BATCHES:
            for name, embedder in embedders.items():
                seconds = best_of(
                    1, functools.partial(_timed, embedder.embed, texts[: counts[batch]], batch)
                )
                measurements[name, batch].samples.extend(seconds)

    agreement: float | None = None
    if "torch" in embedders and "onnx" in embedders:
        a, b = embedders["onnx"].embed(texts), embedders["torch"].embed(texts)
        agreement = float(np.min(np.einsum("ij,ij->i", a, b)))

    print(f"texts: {source}; {count} per repeat at batch 64, {counts[1]} at batch 1")
    print_results(measurements.values(), title="Embedding throughput (sentences/s)")
    rate = {key: m.rate for key, m in measurements.items()}
    median = {key: m.median_rate for key, m in measurements.items()}
    ratios: dict[str, float | None] = {}
    medians: dict[str, float | None] = {}
    pairs = [("onnx", "torch"), ("builtin", "torch"), ("builtin", "onnx")]
    for top, bottom in pairs:
        for batch in BATCHES:
            key = f"{top}_vs_{bottom}.batch{batch}"
            ratios[key] = ratio(rate.get((top, batch)), rate.get((bottom, batch)))
            medians[key] = ratio(median.get((top, batch)), median.get((bottom, batch)))
    print_ratios(
        ratios,
        targets=TARGETS,
        medians=medians,
        explanations={
            "onnx_vs_torch.batch1": "MiniLM, one text per call: onnxruntime / torch",
            "onnx_vs_torch.batch64": "MiniLM, 64 texts per call: onnxruntime / torch",
        },
    )
    if agreement is not None:
        print(f"\nagreement: smallest cosine between onnx and torch vectors = {agreement:.6f}")
    for name, reason in skipped.items():
        print(f"skipped embedder {name}: {reason}")
    if args.json is not None:
        results: dict[str, Any] = {m.name: m for m in measurements.values()}
        results["agreement"] = agreement
        meta = {"texts": source, "loading": notes, "skipped": skipped, "threads": args.threads}
        write_json(args.json, BENCHMARK, results, ratios, meta=meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
