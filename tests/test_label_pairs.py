"""Side-by-side evaluation (``label serve --pairs``): import, blind left/right positions, export, stats."""

from __future__ import annotations

import json
import math

import pytest
import torch
from label_support import Client, pair_rows, pick, threaded_server, write_samples

from lit_rlhf.algorithms.win_rate import win_rate
from lit_rlhf.cli import main
from lit_rlhf.data.records import RecordError
from lit_rlhf.label.pairs import wilson_interval
from lit_rlhf.label.storage import LabelStore

#: (item, labeler) -> the policy the labeler prefers, or "tie". Item 3 lists sft as policy_a.
VERDICTS = {
    (1, "ann"): "ppo",
    (1, "bob"): "ppo",
    (2, "ann"): "ppo",
    (2, "bob"): "tie",
    (3, "ann"): "sft",
    (3, "bob"): "ppo",
    (4, "ann"): "tie",
    (4, "bob"): "tie",
}


def test_wilson_interval_matches_the_formula():
    low, high = wilson_interval(0.6875, 4)
    z = 1.959963984540054
    center = (0.6875 + z * z / 8) / (1 + z * z / 4)
    half = z * math.sqrt(0.6875 * 0.3125 / 4 + z * z / 64) / (1 + z * z / 4)
    assert (low, high) == pytest.approx((center - half, center + half))
    assert wilson_interval(1.0, 10)[1] == 1.0 and wilson_interval(0.0, 10)[0] == 0.0


@pytest.mark.parametrize(
    "line, problem",
    [
        ({"prompt": "p", "policy_a": "x", "response_a": "r"}, "field 'policy_b': missing"),
        ({"prompt": "p", "policy_a": "x", "response_a": "r", "policy_b": "x", "response_b": "s"}, "same policy"),
        ({"prompt": "p", "policy_a": "x", "response_a": 3, "policy_b": "y", "response_b": "s"}, "expected a string"),
        ({"prompt": "p", "policy_a": " ", "response_a": "r", "policy_b": "y", "response_b": "s"}, "policy name"),
        ({"policy_a": "x", "response_a": "r", "policy_b": "y", "response_b": "s"}, "prompt"),
    ],
)
def test_bad_pairs_lines_name_the_field_and_import_nothing(tmp_path, line, problem):
    path = write_samples(tmp_path / "pairs.jsonl", pair_rows()[:1] + [line])
    store = LabelStore(tmp_path / "labels.db")
    with pytest.raises(RecordError, match=problem):
        store.import_pairs(str(path))
    assert store.items() == []


def test_a_database_holds_ranking_items_or_pairs_not_both(tmp_path):
    store = LabelStore(tmp_path / "labels.db")
    store.import_pairs(str(write_samples(tmp_path / "pairs.jsonl", pair_rows())))
    assert store.mode() == "pairs" and store.import_pairs(str(tmp_path / "pairs.jsonl")).already_present == 4
    with pytest.raises(ValueError, match="holds side-by-side pairs"):
        store.import_samples(str(write_samples(tmp_path / "s.jsonl", [{"prompt": "p", "responses": ["a", "b"]}])))


def test_two_labelers_side_by_side_export_and_stats_match_a_hand_computation(tmp_path, capsys):
    store = LabelStore(tmp_path / "labels.db", overlap=2)
    store.import_pairs(str(write_samples(tmp_path / "pairs.jsonl", pair_rows())))
    left_won = decided = 0
    with threaded_server(store) as url:
        for name in ("ann", "bob"):
            client = Client(url).login(name)
            assert client.get("/api/config")[1]["mode"] == "pairs"
            while (data := client.next()[1])["item"] is not None:
                item = data["item"]
                assert [r["index"] for r in item["responses"]] == [0, 1]  # positions, not which policy is which
                assert "policy" not in json.dumps(data)  # the page never learns which policy wrote what
                want = VERDICTS[(item["id"], name)]
                ranking, winner_position = pick(item, want)
                if winner_position is not None:
                    decided += 1
                    left_won += winner_position == 0
                status, result = client.post(
                    "/api/judgment", {"item_id": item["id"], "ranking": ranking, "scores": [7, None]}
                )
                assert status == 200, result
            # Going back shows the judgment in the same positions it was given.
            again = client.get("/api/item/1")[1]
            ranking, _ = pick(again["item"], VERDICTS[(1, name)])
            assert again["judgment"]["ranking"] == ranking and again["judgment"]["scores"] == [7, None]

    out = tmp_path / "judgments.jsonl"
    main(["label", "export", "--db", str(store.path), "--out", str(out)])
    assert "wrote 8 side-by-side judgments" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for r in records:
        assert (r["id"], r["prompt"]) == (f"q{r['id'][1:]}", f"Question {r['id'][1:]}?")
        want = VERDICTS[(int(r["id"][1:]), r["labeler"])]
        assert r["winner_policy"] == (None if want == "tie" else want)
        assert r["winner"] == ("tie" if want == "tie" else "a" if r["policy_a"] == want else "b")
        assert r["left"] in ("a", "b") and r[f"score_{r['left']}"] == 7 and r[f"score_{'ab'[r['left'] == 'a']}"] is None
        assert r["response_a"].startswith(r["policy_a"])
    assert left_won == sum(r["winner"] == r["left"] for r in records)

    main(["label", "stats", "--db", str(store.path)])
    text = capsys.readouterr().out
    # By hand: ppo's per-item outcome (ties half, mean over the two labelers) is 1, 0.75, 0.5, 0.5.
    rate = (1 + 0.75 + 0.5 + 0.5) / 4
    # The interval is the evaluate command's bootstrap over items, on the per-item outcomes.
    found = win_rate(torch.tensor([1, 0.75, 0.5, 0.5]), torch.arange(4))
    assert found.value == rate and found.low < rate < found.high
    assert (
        f"win rate ppo vs sft: {rate:.1%} (95% CI {found.low:.1%} to {found.high:.1%}, bootstrap over 4 items" in text
    )
    assert "4 wins, 3 ties, 1 losses" in text
    found = win_rate(1 - torch.tensor([1, 0.75, 0.5, 0.5]), torch.arange(4))
    assert f"win rate sft vs ppo: {1 - rate:.1%} (95% CI {found.low:.1%} to {found.high:.1%}" in text
    assert "agreement: 50.0% (2 of 4 labeler pairs" in text  # items 1 and 4 agree, 2 and 3 do not
    assert f"the left response won {left_won} of {decided} non-tie judgments" in text and decided == 5
    for flag in ("--val_out", "--demonstrations_out"):
        with pytest.raises(SystemExit):
            main(["label", "export", "--db", str(store.path), "--out", str(out), flag, str(tmp_path / "x.jsonl")])
        assert "not for a side-by-side database" in capsys.readouterr().err
