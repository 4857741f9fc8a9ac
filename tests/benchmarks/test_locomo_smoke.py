"""Smoke test of ``benchmarks/locomo.py`` on a tiny made-up conversation in LoCoMo's format
(the real data may not be beside the repository): every configuration runs, the JSON has the
agreed shape, malformed evidence is repaired and counted. Never asserts on quality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import locomo

SAMPLE = {
    "sample_id": "conv-x",
    "conversation": {
        "speaker_a": "Ann",
        "speaker_b": "Bob",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            {"speaker": "Ann", "dia_id": "D1:1", "text": "I adopted a cat named Miso"},
            {"speaker": "Bob", "dia_id": "D1:2", "text": "What colour is it?"},
            {"speaker": "Ann", "dia_id": "D1:3", "text": "Orange with white paws"},
        ],
        "session_2_date_time": "10:00 am on 9 June, 2023",
        "session_2": [
            {"speaker": "Bob", "dia_id": "D2:1", "text": "I started pottery classes"},
            {"speaker": "Ann", "dia_id": "D2:2", "text": "Miso knocked over a vase"},
        ],
    },
    "qa": [
        {"question": "What is Ann's cat called?", "evidence": ["D1:1"], "category": 4},
        {"question": "What colour is Miso?", "evidence": ["D1:3; D1:1"], "category": 1},
        {"question": "When did Bob start pottery?", "evidence": ["D:2:1"], "category": 2},
        {"question": "What broke?", "evidence": ["D2:02"], "category": 3},
        {"question": "Missing turn", "evidence": ["D9:9"], "category": 4},
        {"question": "Adversarial", "evidence": ["D1:1"], "category": 5},
    ],
}


def test_evidence_is_parsed_leniently() -> None:
    assert locomo.parse_evidence(["D8:6; D9:17"]) == (["D8:6", "D9:17"], 1)
    assert locomo.parse_evidence(["D:11:26", "D30:05", "D1:3"]) == (["D11:26", "D30:5", "D1:3"], 2)
    assert locomo.parse_evidence(["nonsense"]) == ([], 1)


def test_benchmark_runs_every_config_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "locomo.json"
    data.write_text(json.dumps([SAMPLE]))
    out = tmp_path / "out.json"
    assert locomo.main(["--data", str(data), "--embedders", "builtin", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    results = document["results"]
    for config in ("lexical", "semantic", "multiview", "adapted"):
        for k in (5, 10, 20):
            value = results[config]["builtin"]["cat1-4"][f"recall@{k}"]
            assert 0.0 <= value <= 1.0
    assert results["multiview"]["builtin"]["cat4"]["questions"] == 1
    assert "adapted_gain" in results
    splits = document["meta"]["adaptation"]["builtin"]["random_splits"]
    assert splits["splits"] == 6 and len(splits["gains"]) == 6
    assert splits["mean"] == pytest.approx(sum(splits["gains"]) / 6, abs=1e-4)
    meta = document["meta"]["data"]
    assert meta["questions"] == 4 and meta["no_evidence"] == 1 and meta["repaired_evidence"] == 3
    printed = capsys.readouterr().out
    assert "multiview" in printed and "R@10" in printed


def test_missing_data_is_an_error(tmp_path: Path) -> None:
    assert locomo.main(["--data", str(tmp_path / "nope.json")]) == 2


def test_random_splits_are_seeded_complementary_halves() -> None:
    questions = [locomo.Question(f"q{i}", 4, ["D1:1"]) for i in range(9)]
    conv = locomo.Conversation("conv-x", [], questions, 0.0)
    train, test = locomo.split_questions(conv)
    assert [q.text for q in train] == ["q0", "q2", "q4", "q6", "q8"]
    assert locomo.split_questions(conv, "odd") == (test, train)
    seeded = locomo.split_questions(conv, "even", seed=7)
    assert seeded == locomo.split_questions(conv, "even", seed=7)  # reproducible
    assert seeded != locomo.split_questions(conv, "even", seed=8)
    assert sorted(q.text for q in seeded[0] + seeded[1]) == sorted(q.text for q in questions)
    assert locomo.split_questions(conv, "odd", seed=7) == (seeded[1], seeded[0])
