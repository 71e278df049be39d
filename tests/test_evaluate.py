"""``lit-rlhf evaluate`` on the sandbox at tiny size: its outputs, their agreement with the sandbox report (one
evaluation path), and every refusal."""

from __future__ import annotations

import json

import pytest
import torch

from lit_rlhf.cli import main
from lit_rlhf.models.loading import load_causal_lm, load_scalar_model, load_tokenizer
from lit_rlhf.models.saving import save_hf_directory
from lit_rlhf.sandbox.paths import BASE_CONFIG, BASE_MODEL_DIR, DATA_DIR, TOKENIZER_DIR

PROMPTS = str(DATA_DIR / "prompts_eval.jsonl")
HELDOUT = str(DATA_DIR / "pretrain_heldout.txt")
NUM_PROMPTS, SAMPLES, MAX_NEW_TOKENS, NUM_TEXTS = 6, 2, 8, 5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random-init sandbox-sized policy (far from the base) and the base model with a random scalar head (a
    stand-in reward model), both with the sandbox tokenizer."""
    root = tmp_path_factory.mktemp("evaluate_models")
    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(TOKENIZER_DIR))
    random_policy = save_hf_directory(load_causal_lm(str(BASE_CONFIG)), tokenizer, root / "random")
    rm = save_hf_directory(load_scalar_model(str(BASE_MODEL_DIR)), load_tokenizer(str(BASE_MODEL_DIR)), root / "rm")
    return {"random": str(random_policy), "rm": str(rm)}


def _config(out, models, **overrides) -> dict:
    """The evaluation of the tests: the base model as reference (also under a second name) and the random policy,
    judged by the gold labeler and the stand-in RM, with the sandbox report's seed and batch size."""
    config = {
        "policies": {"base": str(BASE_MODEL_DIR), "same": str(BASE_MODEL_DIR), "SFT": models["random"]},
        "reference": "base",
        "prompts": PROMPTS,
        "num_prompts": NUM_PROMPTS,
        "samples_per_prompt": SAMPLES,
        "sampling": {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 1.0, "top_p": 1.0},
        "judges": [
            {"class_path": "lit_rlhf.sandbox.GoldReward", "init_args": {"name": "gold"}},
            {"class_path": "lit_rlhf.rewards.RewardModelScore", "init_args": {"model": models["rm"], "name": "proxy"}},
        ],
        "text": HELDOUT,
        "num_texts": NUM_TEXTS,
        "by": "family",
        "out": str(out),
        "seed": 1234,
        "bootstrap_samples": 200,
        "batch_size": 64,
    }
    config.update(overrides)
    return config


def _run(tmp_path, config: dict, *extra: str) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text(json.dumps(config))  # YAML is a superset of JSON
    main(["evaluate", "--config", str(path), *extra])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, models):
    tmp = tmp_path_factory.mktemp("evaluate")
    _run(tmp, _config(tmp / "out", models, wandb=True))
    return tmp / "out"


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_samples_hold_every_sample_with_its_scores(evaluated):
    rows = _rows(evaluated)
    assert len(rows) == 3 * NUM_PROMPTS * SAMPLES
    assert [r["policy"] for r in rows[:: NUM_PROMPTS * SAMPLES]] == ["base", "same", "SFT"]
    records = [json.loads(line) for line in open(PROMPTS)][:NUM_PROMPTS]
    for row in rows:
        assert set(row["scores"]) == {"gold", "proxy"} and 0.0 <= row["scores"]["gold"] <= 1.0
        assert row["group"] == records[row["prompt_index"]]["family"]
        assert row["prompt"] == records[row["prompt_index"]]["prompt"]
        assert 1 <= row["length"] <= MAX_NEW_TOKENS
    # The same seed for every policy: a policy with the reference's weights draws the reference's samples.
    base, same = ([r for r in rows if r["policy"] == name] for name in ("base", "same"))
    assert [r["response"] for r in base] == [r["response"] for r in same]


def _flat(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}`` (pytest.approx compares flat mappings)."""
    flat = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}{key}/") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def test_results_are_recomputed_from_the_samples(evaluated):
    from lit_rlhf.evaluate import results_from_samples

    results = json.loads((evaluated / "results.json").read_text())
    rows = _rows(evaluated)
    again = results_from_samples(rows, reference="base", judges=["gold", "proxy"], resamples=200, seed=1234)
    for name, numbers in again.items():
        reported = results["policies"][name]
        assert _flat({k: v for k, v in reported.items() if k != "heldout_loss"}) == pytest.approx(_flat(numbers))
        own = [r for r in rows if r["policy"] == name]
        assert reported["score"]["gold"]["value"] == pytest.approx(sum(r["scores"]["gold"] for r in own) / len(own))
        assert reported["length"] == pytest.approx(sum(r["length"] for r in own) / len(own))
        assert reported["heldout_loss"] > 0
    same, far = results["policies"]["same"], results["policies"]["SFT"]
    for judge in ("gold", "proxy"):  # a policy against itself: every comparison a tie
        assert same["win_rate"][judge] == {"value": 0.5, "low": 0.5, "high": 0.5, "prompts": 6, "comparisons": 12}
        assert same["length_controlled_win_rate"][judge]["value"] == pytest.approx(0.5)
    assert (
        same["kl"] == 0.0 and results["policies"]["same"]["heldout_loss"] == results["policies"]["base"]["heldout_loss"]
    )
    assert far["kl"] > 5.0  # random weights are many nats from the base model
    assert set(far["by_group"]) == {r["group"] for r in rows}


def test_report_plots_pairs_and_wandb(evaluated):
    from lit_rlhf.label.storage import LabelStore

    report = (evaluated / "report.md").read_text()
    results = json.loads((evaluated / "results.json").read_text())
    win = results["policies"]["SFT"]["win_rate"]["gold"]
    assert f"| gold | SFT | {win['value']:.3f} [{win['low']:.3f}, {win['high']:.3f}]" in report
    assert "## By family" in report
    for plot in ("win_rates.png", "score_vs_kl.png", "lengths.png"):
        assert (evaluated / plot).stat().st_size > 5000, plot
    pairs = [json.loads(line) for line in (evaluated / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 2 * NUM_PROMPTS  # each non-reference policy against the reference, once per prompt
    assert {(p["policy_a"], p["policy_b"]) for p in pairs} >= {("SFT", "base"), ("base", "SFT")}  # sides shuffled
    store = LabelStore(evaluated / "sbs.db")
    assert store.import_pairs(str(evaluated / "pairs.jsonl")).added == len(pairs)
    assert list((evaluated / "wandb").glob("offline-run-*")), "wandb: true logs an offline run"


def test_sandbox_report_gives_the_same_numbers_on_the_same_samples(evaluated, models, tmp_path):
    """One evaluation path: the sandbox report's gold score, win rate against SFT, KL and held-out loss are
    evaluate's for the same policies, prompts, samples and seed."""
    from lit_rlhf.sandbox.report import gold_results

    report = gold_results(
        {"base": str(BASE_MODEL_DIR), "SFT": models["random"]},
        NUM_PROMPTS,
        NUM_TEXTS,
        SAMPLES,
        MAX_NEW_TOKENS,
        reference="base",
        samples_out=tmp_path / "report_samples.jsonl",
    )
    results = json.loads((evaluated / "results.json").read_text())["policies"]
    rows = {(r["policy"], r["prompt_index"], r["sample"]): r for r in _rows(evaluated)}
    for row in map(json.loads, (tmp_path / "report_samples.jsonl").read_text().splitlines()):
        theirs = rows[(row["policy"], row["prompt_index"], row["sample"])]
        assert (row["response"], row["scores"]["gold"], row["kl"]) == (
            theirs["response"],
            theirs["scores"]["gold"],
            pytest.approx(theirs["kl"]),
        )
    for name in ("base", "SFT"):
        assert report[name]["gold/score"] == pytest.approx(results[name]["score"]["gold"]["value"])
        assert report[name]["gold/win_rate"] == results[name]["win_rate"]["gold"]["value"]
        assert report[name]["kl"] == pytest.approx(results[name]["kl"])
        assert report[name]["heldout/lm_loss"] == pytest.approx(results[name]["heldout_loss"])
        for family, part in results[name]["by_group"].items():
            assert report[name][f"gold/score_{family}"] == pytest.approx(part["score"]["gold"]["value"])


@pytest.fixture(scope="module")
def other_tokenizer_policy(tmp_path_factory, tiny_dir):
    return str(
        save_hf_directory(
            load_causal_lm(str(tiny_dir / "config.json")),
            load_tokenizer(str(tiny_dir / "tokenizer")),
            tmp_path_factory.mktemp("other") / "policy",
        )
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"prompts": "missing/prompts.jsonl"}, "missing/prompts.jsonl: file not found"),
        ({"policies": {"base": str(BASE_MODEL_DIR), "ppo": "runs/nowhere/model"}}, "policies.ppo 'runs/nowhere/model'"),
        ({"reference": "sft"}, "reference 'sft' is not one of the policies (base, same, SFT)"),
        (
            {"judges": [{"class_path": "lit_rlhf.rewards.RewardModelScore", "init_args": {"name": "rm"}}]},
            "judges[0] (RewardModelScore 'rm') needs a model",
        ),
        (
            {"judges": [{"class_path": "lit_rlhf.sandbox.GoldReward"}, {"class_path": "lit_rlhf.sandbox.GoldReward"}]},
            "two judges are named 'gold'",
        ),
        ({"policies": "OTHER"}, "policies.other '"),
        ({"judges": "OTHER"}, "reward_model '"),
        ({"samples_per_prompt": 0}, "samples_per_prompt must be >= 1"),
    ],
)
def test_refusals_are_one_line_before_any_sampling(
    change, message, models, other_tokenizer_policy, tmp_path, capsys, monkeypatch
):
    import lit_rlhf.evaluate.policies as policies

    monkeypatch.setattr(policies, "load_causal_lm", None)  # nothing may load a policy before the refusal
    if change.get("policies") == "OTHER":
        change = {"policies": {"base": str(BASE_MODEL_DIR), "other": other_tokenizer_policy}}
    if change.get("judges") == "OTHER":  # an RM judge whose tokenizer is not the policies'
        change = {
            "policies": {"base": other_tokenizer_policy},
            "judges": [{"class_path": "lit_rlhf.rewards.RewardModelScore", "init_args": {"model": models["rm"]}}],
        }
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path, _config(tmp_path / "out", models, **change))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("lit-rlhf: error: ") and message in error[-1], error
    assert not (tmp_path / "out").exists()


def test_command_line_overrides_a_policy_and_prints_its_config(models, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _run(tmp_path, _config(tmp_path / "out", models), "--policies.ppo", "runs/ppo/model", "--print_config")
    printed = capsys.readouterr().out
    assert (
        "ppo: runs/ppo/model" in printed
        and "same: " in printed
        and "class_path: lit_rlhf.sandbox.GoldReward" in (printed)
    )
