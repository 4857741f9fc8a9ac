"""Online adaptation of a tenant's view weights from feedback, and where the state is kept.

The weights ``w`` live on the simplex (they are normalised when combined, see
``somabrain.memory.hybrid``). A feedback names the memories the agent used among those it was
shown; for every (used ``p``, shown-but-unused ``n``) pair the loss is the logistic ranking loss

    l(w) = log(1 + exp(-(w . (v_p - v_n)) / tau))

of the two memories' view-score vectors ``v`` (``tau`` is the temperature: smaller means only
mis-ordered pairs count). ``l`` is convex in ``w``; its mean over the pairs has the gradient

    g = -mean_pairs sigmoid(-(w . d) / tau) * d / tau,   d = v_p - v_n,

and the update is exponentiated gradient (multiplicative weights), the mirror-descent step that
keeps ``w`` on the simplex without a projection:

    w_i <- w_i * exp(-eta_t * r * g_i) / Z,   eta_t = min(max_rate, rate / sqrt(1 + t)),

with ``t`` the number of updates so far (the decaying rate of online convex optimisation's
O(sqrt T) regret bound, capped so that no single feedback can swing the weights) and ``r`` the
feedback's reward (``utility`` or ``reward``, clipped to [0, 1]; 1 when absent). Then the
weights are pulled towards the tenant's defaults ``p``:

    w_i <- w_i ** (1 - beta) * p_i ** beta / Z,   beta = prior_pull,

the mirror-descent step of a KL regulariser centred on the defaults: a weight moves only as far
as consistent feedback keeps pushing it (at equilibrium its log-ratio to the default is about
``(1 - beta) / beta`` times the typical step). Why: the pairs compare only the memories the
agent was *shown*, so the gradient says how to reorder those, not which memories outside them
deserve a place; on LoCoMo the unregularised steps moved the MiniLM weights away from the tuned
defaults and cost 0.014-0.020 of held-out recall@10 (the best weights in hindsight gain only
0.004 there). ``beta`` is per embedder unless configured (``PRIOR_PULL``): 0.5 for MiniLM,
whose updates are neutral only that close to its defaults, 0.1 for the hashing embedder,
whose weights gain from moving further. Then every weight
is floored at ``min_weight`` (and renormalised): a view is never switched off for good, so the
tenant can always learn it back. Feedback with no used memory, or nothing unused to compare
with, changes no weight (it is still counted in the history).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Protocol

import anyio
import msgspec
import numpy as np
from msgspec import Meta

from ..memory.errors import MemoryStoreError
from ..memory.form import learn as learn_form

__all__ = [
    "AdaptationSettings",
    "AdaptationState",
    "AdaptationStore",
    "HistoryEntry",
    "StateBackend",
    "Update",
    "adapt",
    "state_path",
]

logger = logging.getLogger("somabrain.context")


#: ``prior_pull`` per embedder, where the config leaves it unset. MiniLM's default weights
#: are close to the best in hindsight on LoCoMo, and its feedback moved them away: with 0.1
#: the weight updates cost MiniLM's adapted gain about 0.006 (``benchmarks/locomo.py``, mean
#: over eight splits), with 0.5 they are neutral. The hashing embedder's weights gain from
#: moving: 0.1 (0.5 cost it 0.003).
PRIOR_PULL: dict[str, float] = {"builtin": 0.1, "minilm": 0.5}


class AdaptationSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Config section ``context.adaptation``."""

    enabled: bool = True
    learning_rate: float = 0.3
    max_learning_rate: float = 1.0
    temperature: float = 0.3
    min_weight: float = 0.02
    #: Salience strength added to each used memory per feedback (times the reward).
    reinforce: float = 1.0
    #: History entries kept in the state file (the count of all feedback is kept apart).
    history_size: int = 256
    #: Pull of every update towards the tenant's default weights (0: none, 1: back to them);
    #: unset (None), the embedder's (``PRIOR_PULL``, filled in by ``for_embedder``).
    prior_pull: Annotated[float, Meta(ge=0, le=1)] | None = None
    #: The ``form`` view's default weight, as a fraction of the other views' sum (when
    #: ``memory.weights`` is not set), and the learning rate of its model
    #: (``somabrain.memory.form``): what kind of memory feedback uses.
    form_weight: Annotated[float, Meta(ge=0, le=10)] = 0.2
    form_rate: Annotated[float, Meta(ge=0, le=10)] = 0.05

    @property
    def pull(self) -> float:
        return PRIOR_PULL["builtin"] if self.prior_pull is None else self.prior_pull

    def for_embedder(self, embedder: str) -> AdaptationSettings:
        """These settings with ``prior_pull``, when unset, taken from ``embedder``'s."""
        if self.prior_pull is not None:
            return self
        return msgspec.structs.replace(
            self, prior_pull=PRIOR_PULL.get(embedder, PRIOR_PULL["builtin"])
        )


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    at: float
    reward: float
    used: int
    shown: int
    applied: bool
    weights: dict[str, float]


class AdaptationState(msgspec.Struct, kw_only=True):
    """One tenant's adaptive state, as stored (JSON) and shown by the state endpoint."""

    tenant: str
    weights: dict[str, float]
    updates: int = 0
    feedback: int = 0
    updated_at: float = 0.0
    history: list[HistoryEntry] = []
    #: The form view's model, a weight per feature (``memory.form.FEATURES``); empty until
    #: the first feedback with a pair to learn from.
    form: dict[str, float] = {}


class Update(msgspec.Struct, frozen=True, kw_only=True):
    applied: bool
    weights_before: dict[str, float]
    weights_after: dict[str, float]
    learning_rate: float
    pairs: int


def _normalise(weights: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    w = np.array([max(0.0, float(weights.get(n, 0.0))) for n in names], dtype=np.float64)
    total = w.sum()
    return w / total if total > 0 else np.full(len(names), 1.0 / len(names))


def _floor(w: np.ndarray, minimum: float) -> np.ndarray:
    """The closest point (in the multiplicative sense) of the simplex with every w_i >= min."""
    minimum = min(minimum, 1.0 / len(w))
    for _ in range(len(w)):
        low = w < minimum
        if not low.any():
            break
        free = ~low
        rest = 1.0 - minimum * np.count_nonzero(low)
        w = np.where(low, minimum, w * rest / w[free].sum())
    return w


def _pull(
    w: np.ndarray, prior: Mapping[str, float], names: Sequence[str], beta: float
) -> np.ndarray:
    """``w ** (1 - beta) * p ** beta``, renormalised: the weighted geometric mean of the
    weights and the prior ``p`` (the prior restricted to ``names``, on the simplex). A view the
    prior does not name keeps its share of ``w``."""
    p = np.array([prior.get(n, math.nan) for n in names], dtype=np.float64)
    known = np.isfinite(p) & (p > 0.0)
    if not known.any():
        return w
    p = np.where(known, p / p[known].sum() * w[known].sum(), w)
    log_w = (1.0 - beta) * np.log(np.maximum(w, 1e-12)) + beta * np.log(np.maximum(p, 1e-12))
    out: np.ndarray = np.exp(log_w - log_w.max())
    out /= out.sum()
    return out


def adapt(
    weights: Mapping[str, float],
    used: Sequence[Mapping[str, float]],
    unused: Sequence[Mapping[str, float]],
    *,
    reward: float = 1.0,
    step: int = 0,
    settings: AdaptationSettings | None = None,
    prior: Mapping[str, float] | None = None,
) -> Update:
    """One exponentiated-gradient step (module docstring). ``used``/``unused``: the view
    scores of the used and of the shown-but-unused memories; ``prior``: the weights the step
    is pulled towards (the tenant's defaults). Pure: returns the new weights."""
    cfg = settings or AdaptationSettings()
    names = list(weights)
    before = {n: float(v) for n, v in weights.items()}
    r = min(1.0, max(0.0, reward)) if math.isfinite(reward) else 0.0
    if not used or not unused or r == 0.0 or not names:
        return Update(
            applied=False,
            weights_before=before,
            weights_after=dict(before),
            learning_rate=0.0,
            pairs=0,
        )
    w = _normalise(weights, names)
    pos = np.array([[float(v.get(n, 0.0)) for n in names] for v in used])
    neg = np.array([[float(v.get(n, 0.0)) for n in names] for v in unused])
    d = (pos[:, None, :] - neg[None, :, :]).reshape(-1, len(names))
    tau = cfg.temperature
    margin = (d @ w) / tau
    slope = 0.5 * (1.0 - np.tanh(margin / 2.0))  # sigmoid(-margin), without overflow
    grad = -(slope[:, None] * d).mean(axis=0) / tau
    rate = min(cfg.max_learning_rate, cfg.learning_rate / math.sqrt(1.0 + step))
    w = w * np.exp(-rate * r * grad)
    w = w / w.sum()
    if prior is not None and cfg.pull > 0.0:
        w = _pull(w, prior, names, cfg.pull)
    w = _floor(w, cfg.min_weight)
    after = {n: float(x) for n, x in zip(names, w, strict=True)}
    return Update(
        applied=True,
        weights_before=before,
        weights_after=after,
        learning_rate=rate * r,
        pairs=int(d.shape[0]),
    )


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(AdaptationState)


def _file_name(tenant: str) -> str:
    import hashlib

    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", tenant)[:48].strip("_") or "tenant"
    return f"{slug}-{hashlib.blake2b(tenant.encode(), digest_size=8).hexdigest()}.json"


def state_path(directory: str | os.PathLike[str], tenant: str) -> Path:
    """The file of ``tenant``'s state in ``directory`` (a node's is ``<data-dir>/context``)."""
    return Path(directory) / _file_name(tenant)


class StateBackend(Protocol):
    """Where tenants' states are kept instead of files (``pg_log.PostgresStates``: a row each
    in the memory database, so that a cluster member standing in for another finds them)."""

    async def load(self, tenant: str) -> bytes | None: ...

    async def save(self, tenant: str, data: bytes) -> None: ...


class AdaptationStore:
    """Every tenant's ``AdaptationState``: in memory, and one JSON file each in ``directory``
    (written whole to a temporary file, fsynced and renamed over the old one, so a crash
    leaves the old state or the new one, never half of each), or in ``backend``.
    ``directory=None`` and no backend keeps the state in memory only.

    Reads and updates are synchronous (no await between reading the weights and writing the
    new ones), so concurrent feedback on one event loop never loses an update; ``save`` runs
    the file write in a worker thread and writes the latest state. With a backend, ``ensure``
    loads a tenant's state before its first use.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None,
        defaults: Mapping[str, float],
        settings: AdaptationSettings | None = None,
        backend: StateBackend | None = None,
    ) -> None:
        self.directory = Path(directory) if directory is not None and backend is None else None
        self.backend = backend
        self.defaults = dict(defaults)
        self.settings = settings or AdaptationSettings()
        self._states: dict[str, AdaptationState] = {}
        self._locks: dict[str, anyio.Lock] = {}
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    async def ensure(self, tenant: str) -> None:
        """Load the tenant's state from the backend, if it is not in memory yet. When the
        backend cannot be reached the defaults serve this request (and are not kept: the
        next one tries again)."""
        if self.backend is None or tenant in self._states:
            return
        try:
            data = await self.backend.load(tenant)
        except MemoryStoreError as exc:
            logger.warning("adaptation state of tenant %r not loaded: %s", tenant, exc)
            return
        if tenant not in self._states:  # no other request loaded it meanwhile
            self._states[tenant] = self._decoded(tenant, data) if data else self._fresh(tenant)

    def forget(self, tenant: str) -> None:
        """Drop the tenant's state from memory (another member serves it now: it will
        be loaded again, as that member left it, if the tenant comes back)."""
        if self.backend is not None:
            self._states.pop(tenant, None)

    def _path(self, tenant: str) -> Path | None:
        return None if self.directory is None else state_path(self.directory, tenant)

    def get(self, tenant: str) -> AdaptationState:
        """The tenant's state (loaded from its file on first use, or by ``ensure`` from the
        backend; defaults if none)."""
        state = self._states.get(tenant)
        if state is None:
            state = self._load(tenant)
            if self.backend is None:  # else: not loaded (``ensure`` could not), not kept
                self._states[tenant] = state
        return state

    def _fresh(self, tenant: str) -> AdaptationState:
        return AdaptationState(tenant=tenant, weights=dict(self.defaults))

    def _load(self, tenant: str) -> AdaptationState:
        path = self._path(tenant)
        if path is None or not path.exists():
            return self._fresh(tenant)
        try:
            state = _DECODER.decode(path.read_bytes())
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            # A damaged file must not take the tenant down: start from the defaults and keep
            # the bad file beside for inspection.
            path.replace(path.with_suffix(f".corrupt-{int(time.time())}"))
            return self._fresh(tenant)
        return self._current(state)

    def _decoded(self, tenant: str, data: bytes) -> AdaptationState:
        try:
            return self._current(_DECODER.decode(data))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.error("adaptation state of tenant %r is damaged, starting over: %s", tenant, exc)
            return self._fresh(tenant)

    def _current(self, state: AdaptationState) -> AdaptationState:
        # Views added to the defaults since the state was written start at their default.
        state.weights = {n: state.weights.get(n, v) for n, v in self.defaults.items()}
        return state

    def weights(self, tenant: str) -> dict[str, float]:
        return dict(self.get(tenant).weights)

    def form(self, tenant: str) -> dict[str, float] | None:
        """The tenant's form model for its recalls (None: nothing learned yet)."""
        return dict(self.get(tenant).form) or None

    def record(
        self,
        tenant: str,
        used: Sequence[Mapping[str, float]],
        unused: Sequence[Mapping[str, float]],
        *,
        reward: float = 1.0,
        now: float | None = None,
        forms: tuple[Sequence[Sequence[float]], Sequence[Sequence[float]]] = ((), ()),
    ) -> Update:
        """Apply one feedback to the tenant's weights (``adapt``) and its form model
        (``forms``: the form features of the used and of the unused memories, ``form.learn``),
        and append to its history."""
        state = self.get(tenant)
        cfg = self.settings
        if cfg.enabled and cfg.form_rate > 0.0 and forms[0] and forms[1]:
            state.form = learn_form(state.form, *forms, reward=reward, rate=cfg.form_rate)
        if cfg.enabled:
            update = adapt(
                state.weights,
                used,
                unused,
                reward=reward,
                step=state.updates,
                settings=cfg,
                prior=self.defaults,
            )
        else:
            w = dict(state.weights)
            update = Update(
                applied=False, weights_before=w, weights_after=dict(w), learning_rate=0.0, pairs=0
            )
        state.weights = dict(update.weights_after)
        state.updates += update.applied
        state.feedback += 1
        state.updated_at = time.time() if now is None else now
        state.history.append(
            HistoryEntry(
                at=state.updated_at,
                reward=reward,
                used=len(used),
                shown=len(used) + len(unused),
                applied=update.applied,
                weights=dict(update.weights_after),
            )
        )
        del state.history[: -cfg.history_size]
        return update

    def reset(self, tenant: str) -> AdaptationState:
        state = self._fresh(tenant)
        self._states[tenant] = state
        return state

    async def save(self, tenant: str) -> None:
        """Write the tenant's current state durably (no-op without a directory or backend)."""
        path = self._path(tenant)
        if path is None and self.backend is None:
            return
        lock = self._locks.setdefault(tenant, anyio.Lock())
        async with lock:
            state = self._states.get(tenant)
            if state is None:  # forgotten meanwhile (it moved): the new owner keeps it
                return
            data = _ENCODER.encode(state)  # the latest state, taken under the lock
            if self.backend is not None:
                await self.backend.save(tenant, data)
            elif path is not None:
                await anyio.to_thread.run_sync(_write_atomic, path, data)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
