"""The labeling database, export and agreement statistics, without a web server."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import pytest
from label_support import synthetic_samples, write_samples

from lit_rlhf.cli import main
from lit_rlhf.data.records import RecordError
from lit_rlhf.label.export import export_comparisons
from lit_rlhf.label.judgments import (
    Judgment,
    SubmissionError,
    dense_ranks,
    parse_judgment,
    positional_ranks,
    ranks_from_groups,
)
from lit_rlhf.label.stats import agreement, compare_rankings, format_stats, labeler_activity
from lit_rlhf.label.storage import LabelStore


def judged(ranking, k=None, rewrite=None, scores=None, flags=None) -> Judgment:
    k = k or sum(len(g) for g in ranking)
    return Judgment(ranking, scores or [None] * k, flags or [[] for _ in range(k)], rewrite)


@pytest.fixture
def store(tmp_path):
    store = LabelStore(tmp_path / "labels.db", overlap=2)
    store.import_samples(str(write_samples(tmp_path / "samples.jsonl", synthetic_samples(4))))
    for name in ("ann", "bob", "cid"):
        store.add_labeler(name)
    return store


def test_import_dedupes_responses_and_a_second_import_adds_only_new_lines(tmp_path):
    rows = synthetic_samples(3)
    rows.append({"prompt": "p", "responses": ["same", "same", " ", "other"]})  # repeated and empty responses dropped
    rows.append({"prompt": "q", "responses": ["one", "one", ""]})  # one distinct response: nothing to compare
    samples = write_samples(tmp_path / "samples.jsonl", rows)
    store = LabelStore(tmp_path / "labels.db")
    counts = store.import_samples(str(samples))
    assert (counts.added, counts.already_present, counts.too_few_responses) == (4, 0, 1)
    assert store.items()[3].responses == ["same", "other"]
    assert store.items()[0].record == {"prompt": "Reverse the letters of 'word0'.", "family": "reverse"}

    write_samples(samples, rows + synthetic_samples(5)[3:])  # the same lines again, plus two new ones
    counts = store.import_samples(str(samples))
    assert (counts.added, counts.already_present) == (2, 4)
    assert len(store.items()) == 6


@pytest.mark.parametrize(
    "line, field, problem",
    [
        ('{"responses": ["a", "b"]}', "prompt", "missing"),
        ('{"prompt": "p", "responses": "a"}', "responses", "expected a list"),
        ('{"prompt": "p", "responses": ["a", 3]}', "responses[1]", "expected a string"),
        ('{"prompt": "p", "responses": ["a", "b"]', None, "not valid JSON"),
        ('{"messages": [{"role": "robot", "content": "x"}], "responses": ["a", "b"]}', "messages", ""),
    ],
)
def test_bad_samples_file_names_file_line_and_field_and_imports_nothing(tmp_path, line, field, problem):
    samples = write_samples(tmp_path / "samples.jsonl", [synthetic_samples(1)[0], line])
    store = LabelStore(tmp_path / "labels.db")
    with pytest.raises(RecordError) as error:
        store.import_samples(str(samples))
    message = str(error.value)
    assert message.startswith(f"{samples}: record 2")
    if field is not None:
        assert f"field '{field}" in message
    assert problem in message
    assert store.items() == []  # the good first line was not imported either


def test_bad_samples_file_through_the_command_is_one_line_and_exit_code_2(tmp_path, capsys):
    samples = write_samples(
        tmp_path / "samples.jsonl", [synthetic_samples(1)[0], '{"prompt": "p", "responses": ["a", 3]}']
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["label", "import", "--db", str(tmp_path / "labels.db"), "--samples", str(samples)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"lit-rlhf: error: {samples}: record 2: field 'responses[1]': expected a string, got int"
    )


def test_chat_prompts_show_their_turns(tmp_path):
    samples = write_samples(
        tmp_path / "s.jsonl", [{"messages": [{"role": "user", "content": "Hi <there>"}], "responses": ["a", "b"]}]
    )
    store = LabelStore(tmp_path / "labels.db")
    store.import_samples(str(samples))
    assert store.items()[0].prompt_text == "user: Hi <there>"


def test_overlap_hands_each_item_to_at_most_n_labelers_and_resumes_the_lease(store):
    assert store.next_item("ann") == 1
    assert store.next_item("ann") == 1  # asking again (a reload, a restart) gives the same item
    assert store.next_item("bob") == 1  # overlap 2: a second labeler may hold it too
    assert store.next_item("cid") == 2  # ... but not a third
    store.submit("ann", 1, judged([[0], [1], [2], [3]]))
    assert store.next_item("ann") == 2  # cid holds item 2: one slot of two left
    store.submit("bob", 1, judged([[1], [0], [2], [3]]))
    assert store.next_item("bob") == 3  # item 2 is held by ann and cid
    store.submit("cid", 2, None)  # a skip frees cid's slot for someone else, and cid never sees it again
    assert store.next_item("cid") == 3  # bob holds item 3: one slot of two left
    assert store.next_item("ann") == 2  # ann still holds 2 after cid skipped it
    assert store.progress("cid") == {
        "done": 0,
        "skipped": 1,
        "remaining": 2,
        "items": 4,
        "items_complete": 1,
        "overlap": 2,
    }
    assert store.progress("ann")["remaining"] == 3  # items 2, 3, 4 still need a judgment from someone like ann


def test_an_abandoned_lease_expires_and_the_item_goes_to_someone_else(tmp_path):
    store = LabelStore(tmp_path / "labels.db", overlap=1, lease_seconds=1.5)
    store.import_samples(str(write_samples(tmp_path / "s.jsonl", synthetic_samples(2))))
    for name in ("ann", "bob"):
        store.add_labeler(name)
    assert store.next_item("ann") == 1
    assert store.next_item("bob") == 2
    assert store.next_item("cid") is None  # everything is held
    time.sleep(1.6)
    store.add_labeler("cid")
    assert store.next_item("cid") == 1  # ann's lease ran out
    store.submit("cid", 1, judged([[1], [0], [2], [3]]))
    with pytest.raises(SubmissionError, match="lease ran out") as error:  # ann's late answer: the item is complete
        store.submit("ann", 1, judged([[0], [1], [2], [3]]))
    assert error.value.status == 409 and store.judgment("ann", 1) is None
    assert store.next_item("ann") == 2  # her void lease is gone, and bob's lease on item 2 ran out too


def test_edits_need_the_revision_the_labeler_saw(store):
    store.next_item("ann")
    assert store.submit("ann", 1, judged([[0], [1], [2], [3]])) == 1
    assert store.submit("ann", 1, judged([[3], [1, 2], [0]], rewrite="better"), base_revision=1) == 2
    with pytest.raises(SubmissionError, match="stale") as error:
        store.submit("ann", 1, judged([[0], [1], [2], [3]]), base_revision=1)  # a second tab with the old page
    assert error.value.status == 409
    stored = store.judgment("ann", 1)
    assert stored["ranking"] == [[3], [1, 2], [0]] and stored["revision"] == 2 and stored["rewrite"] == "better"
    with pytest.raises(SubmissionError, match="not assigned") as error:
        store.submit("ann", 3, judged([[0], [1], [2], [3]]))  # never handed to ann
    assert error.value.status == 409
    with pytest.raises(SubmissionError, match="no such item") as error:
        store.submit("ann", 99, judged([[0], [1]]))
    assert error.value.status == 404
    assert [h["item_id"] for h in store.history("ann")] == [1]


@pytest.mark.parametrize(
    "payload, problem",
    [
        ({"ranking": [[0], [1], [2]]}, "ranks 3 responses but this item has 4"),
        ({"ranking": [[0], [1], [2], [3], [4]]}, "4 is not a response index"),
        ({"ranking": [[0], [1, 0], [2], [3]]}, "response 0 is ranked twice"),
        ({"ranking": [[0], [], [1, 2, 3]]}, "ranking[1]: expected a non-empty list"),
        ({"ranking": "0123"}, "expected a list of tie groups"),
        ({"ranking": [[0], [1], [2], [3]], "scores": [1, 2, 8, None]}, "scores[2]: expected an integer from 1 to 7"),
        ({"ranking": [[0], [1], [2], [3]], "scores": [1, 2]}, "scores: expected a list of 4"),
        ({"ranking": [[0], [1], [2], [3]], "flags": [[], ["nonsense"], [], []]}, "flags[1]: unknown flag 'nonsense'"),
        ({"ranking": [[True], [1], [2], [3]]}, "True is not a response index"),
    ],
)
def test_bad_submissions_name_the_field(payload, problem):
    with pytest.raises(SubmissionError, match=problem.replace("[", r"\[").replace("]", r"\]")) as error:
        parse_judgment(payload, 4)
    assert error.value.status == 400


def test_rank_arithmetic():
    assert ranks_from_groups([[2], [0, 3], [1]]) == [1, 2, 0, 1]
    assert positional_ranks([[2], [0, 3], [1]]) == [1.5, 3.0, 0.0, 1.5]
    assert dense_ranks([1.5, 3.0, 0.0, 1.5]) == [1, 2, 0, 1]
    ok = parse_judgment(
        {"ranking": [[2], [3, 0], [1]], "scores": [7, None, 1, 4], "flags": [["opinion", "opinion"], [], [], []]}, 4
    )
    assert ok.ranking == [[2], [0, 3], [1]] and ok.flags[0] == ["opinion"] and ok.scores == [7, None, 1, 4]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_per_labeler_and_merged_keeps_ties_and_leaves_out_skips_and_all_tied(store, tmp_path):
    store.next_item("ann"), store.next_item("bob")
    store.submit("ann", 1, judged([[2], [0, 3], [1]], scores=[5, 1, 7, 5], flags=[["opinion"], [], [], []]))
    store.submit("bob", 1, judged([[0], [2], [3], [1]], rewrite="drow0"))
    assert store.next_item("ann") == 2
    store.submit("ann", 2, judged([[0, 1, 2, 3]]))  # everything tied: no pair to learn from
    assert store.next_item("bob") == 2
    store.submit("bob", 2, None)  # skipped

    out = tmp_path / "per.jsonl"
    counts = export_comparisons(str(store.path), str(out), demonstrations_out=str(tmp_path / "demos.jsonl"))
    assert (counts.comparisons, counts.skipped, counts.all_tied, counts.items_without_judgment) == (2, 1, 1, 2)
    responses = store.item(1).responses
    ann, bob = read_jsonl(out)
    assert ann["labeler"] == "ann" and ann["family"] == "reverse" and ann["prompt"] == store.item(1).prompt_text
    assert ann["responses"] == [responses[2], responses[0], responses[3], responses[1]]  # best first
    assert ann["ranks"] == [0, 1, 1, 2]  # the tie is an equal rank
    assert ann["scores"] == [7, 5, 5, 1] and ann["flags"][1] == ["opinion"]  # metadata follows its response
    assert bob["responses"] == [responses[0], responses[2], responses[3], responses[1]] and bob["ranks"] == [0, 1, 2, 3]
    assert read_jsonl(tmp_path / "demos.jsonl") == [
        {"prompt": store.item(1).prompt_text, "family": "reverse", "labeler": "bob", "response": "drow0"}
    ]

    merged = tmp_path / "merged.jsonl"
    export_comparisons(str(store.path), str(merged), merge="mean_rank")
    (record,) = read_jsonl(merged)
    # positional ranks: ann [1.5, 3, 0, 1.5], bob [0, 3, 1, 2] -> means [0.75, 3, 0.5, 1.75]
    assert record["responses"] == [responses[2], responses[0], responses[3], responses[1]]
    assert record["ranks"] == [0, 1, 2, 3] and record["labelers"] == ["ann", "bob"]


def test_export_split_keeps_an_items_records_together(tmp_path):
    store = LabelStore(tmp_path / "labels.db", overlap=2)
    store.import_samples(str(write_samples(tmp_path / "s.jsonl", synthetic_samples(10))))
    for name in ("ann", "bob"):
        store.add_labeler(name)
        while (item_id := store.next_item(name)) is not None:
            store.submit(name, item_id, judged([[0], [1], [2], [3]]))
    counts = export_comparisons(
        str(store.path), str(tmp_path / "train.jsonl"), val_out=str(tmp_path / "val.jsonl"), val_fraction=0.2
    )
    assert (counts.comparisons, counts.val_comparisons) == (16, 4)
    train_prompts = {r["prompt"] for r in read_jsonl(tmp_path / "train.jsonl")}
    val_prompts = {r["prompt"] for r in read_jsonl(tmp_path / "val.jsonl")}
    assert len(val_prompts) == 2 and not train_prompts & val_prompts


def test_agreement_is_the_share_of_pairs_ordered_alike():
    assert compare_rankings([0, 1, 2, 3], [0, 1, 2, 3]).share == 1.0
    assert compare_rankings([0, 1, 2, 3], [3, 2, 1, 0]).share == 0.0
    tally = compare_rankings([0, 1, 2, 3], [1, 0, 2, 3])  # one of six pairs swapped
    assert (tally.agreed, tally.compared, tally.tied_pairs) == (5, 6, 0)
    tally = compare_rankings([0, 0, 1, 2], [0, 1, 2, 3])  # the pair ann tied carries no preference
    assert (tally.agreed, tally.compared, tally.tied_pairs) == (5, 5, 1)

    def j(item, labeler, ranking):
        return {
            "item_id": item,
            "labeler": labeler,
            "status": "ranked",
            "ranking": ranking,
            "revision": 1,
            "shown_at": 0.0,
            "submitted_at": 10.0 * item,
        }

    judgments = [
        j(1, "ann", [[0], [1], [2], [3]]),
        j(1, "bob", [[1], [0], [2], [3]]),  # 5/6
        j(2, "ann", [[0], [1], [2]]),
        j(2, "cid", [[2], [1], [0]]),  # 0/3
        j(3, "bob", [[0], [1]]),
        j(3, "cid", [[0], [1]]),  # 1/1
        j(4, "ann", [[0], [1]]),  # one labeler only: no agreement to measure
    ]
    found = agreement(judgments)
    assert (found.pooled.agreed, found.pooled.compared) == (6, 10)
    assert found.per_labeler["ann"].share == pytest.approx(5 / 9)
    assert found.per_labeler["bob"].share == pytest.approx(6 / 7)
    assert found.per_labeler["cid"].share == pytest.approx(1 / 4)
    mean, stderr = found.mean_and_stderr
    shares = [5 / 9, 6 / 7, 1 / 4]
    assert mean == pytest.approx(sum(shares) / 3)
    assert stderr == pytest.approx((sum((s - mean) ** 2 for s in shares) / 2) ** 0.5 / 3**0.5)
    activity = labeler_activity(judgments)
    assert activity["ann"]["ranked"] == 3 and activity["ann"]["median_seconds"] == 20.0


def test_stats_and_export_commands(store, tmp_path, capsys):
    store.next_item("ann"), store.next_item("bob")
    store.submit("ann", 1, judged([[0], [1], [2], [3]]))
    store.submit("bob", 1, judged([[0], [1], [3], [2]]))
    text = format_stats(store)
    assert "agreement: 83.3%" in text and "pooled 83.3% of 6 pairs" in text
    main(["label", "export", "--db", str(store.path), "--out", str(tmp_path / "x.jsonl")])
    assert "wrote 2 comparisons" in capsys.readouterr().out and len(read_jsonl(tmp_path / "x.jsonl")) == 2
    main(["label", "stats", "--db", str(store.path)])
    assert "agreement: 83.3%" in capsys.readouterr().out


def test_only_the_server_module_imports_the_web_framework():
    """Storage, export, stats and the command line load without Flask: the web framework is imported at
    module level by lit_rlhf/label/server.py alone, and that module only inside ``label serve``."""
    root = Path(__file__).parents[1] / "lit_rlhf"
    web = {"flask", "waitress", "werkzeug", "jinja2"}
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only: imports inside functions are lazy
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                if (name.split(".")[0] in web and path.name != "server.py") or name == "lit_rlhf.label.server":
                    offenders.append(f"{path.relative_to(root)}: {name}")
    assert offenders == []
