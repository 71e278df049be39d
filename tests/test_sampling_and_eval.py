"""Collecting comparisons (sample K, gold-label) and the gold-score evaluation callback."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_jsonl

from lit_rlhf.cli import main
from lit_rlhf.evaluation import lm_loss_on_texts
from lit_rlhf.models.loading import load_causal_lm, load_tokenizer
from lit_rlhf.models.saving import save_hf_directory
from lit_rlhf.sandbox.paths import BASE_CONFIG, DATA_DIR, TOKENIZER_DIR


@pytest.fixture(scope="module")
def sandbox_model_dir(tmp_path_factory):
    """A random-init sandbox-sized model saved as an HF directory."""
    out = tmp_path_factory.mktemp("sandbox_model")
    torch.manual_seed(0)
    return save_hf_directory(load_causal_lm(str(BASE_CONFIG)), load_tokenizer(str(TOKENIZER_DIR)), out)


def test_sample_then_label_writes_valid_comparisons(sandbox_model_dir, tmp_path):
    samples = tmp_path / "samples.jsonl"
    main(
        [
            "sample",
            "--model",
            str(sandbox_model_dir),
            "--prompts",
            str(DATA_DIR / "prompts_train.jsonl"),
            "--out",
            str(samples),
            "--k",
            "4",
            "--limit",
            "12",
            "--max_new_tokens",
            "8",
            "--seed",
            "3",
        ]
    )
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(lines) == 12 and all(len(line["responses"]) == 4 for line in lines)
    assert all("family" in line and "answer" in line for line in lines)  # prompt fields pass through for the labeler

    again = tmp_path / "again.jsonl"
    main(
        [
            "sample",
            "--model",
            str(sandbox_model_dir),
            "--prompts",
            str(DATA_DIR / "prompts_train.jsonl"),
            "--out",
            str(again),
            "--k",
            "4",
            "--limit",
            "12",
            "--max_new_tokens",
            "8",
            "--seed",
            "3",
        ]
    )
    assert again.read_text() == samples.read_text()  # same seed, same samples

    main(["sandbox", "label", "--samples", str(samples), "--out_dir", str(tmp_path / "cmp"), "--val_fraction", "0.25"])
    train = [json.loads(line) for line in (tmp_path / "cmp/train.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (tmp_path / "cmp/val.jsonl").read_text().splitlines()]
    assert len(train) + len(val) <= 12 and val
    from lit_rlhf.sandbox.labeler import GoldLabeler

    labeler = GoldLabeler()
    for comparison in train + val:
        assert comparison["ranks"] == sorted(comparison["ranks"]) and comparison["ranks"][-1] > 0
        source = next(line for line in lines if line["prompt"] == comparison["prompt"])
        scores = [labeler.score(source, r) for r in comparison["responses"]]
        for i, j in [(i, j) for i in range(len(scores)) for j in range(len(scores))]:
            if comparison["ranks"][i] < comparison["ranks"][j]:
                assert scores[i] > scores[j]  # a better rank means a higher gold score


def test_sample_refuses_k_below_two(sandbox_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "sample",
                "--model",
                str(sandbox_model_dir),
                "--prompts",
                str(DATA_DIR / "prompts_train.jsonl"),
                "--out",
                str(tmp_path / "x"),
                "--k",
                "1",
            ]
        )
    assert exit_info.value.code == 2
    assert "lit-rlhf: error: k must be >= 2, got 1" in capsys.readouterr().err


def test_gold_score_evaluation_scores_a_perfect_and_a_broken_policy(tmp_path):
    """The callback's numbers are the labeler's: an oracle 'model' scores 1, an empty one 0."""
    from lit_rlhf.sandbox.callbacks import GoldScoreEvaluation

    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [json.loads(line) for line in (DATA_DIR / "prompts_eval.jsonl").read_text().splitlines()[:10]],
    )
    evaluation = GoldScoreEvaluation(prompts=str(prompts), num_prompts=10)
    answers = {r.data["prompt"]: " " + r.data["answer"] for r in evaluation.records}

    import lit_rlhf.sandbox.callbacks as module

    original = module.sample_and_score
    try:
        module.sample_and_score = _fake_sampler(lambda prompt, j: answers[prompt])
        sums = evaluation.evaluate(model=None, tokenizer=load_tokenizer(str(TOKENIZER_DIR)))
        assert float(sums["gold/score"] / sums["gold/score/count"]) == pytest.approx(1.0)
        module.sample_and_score = _fake_sampler(lambda prompt, j: "")
        sums = evaluation.evaluate(model=None, tokenizer=load_tokenizer(str(TOKENIZER_DIR)))
        assert float(sums["gold/score"] / sums["gold/score/count"]) == 0.0
        families = {k for k in sums if k.startswith("gold/score_") and not k.endswith("/count")}
        assert families and sum(float(sums[f + "/count"]) for f in families) == 10
    finally:
        module.sample_and_score = original


def _fake_sampler(respond):
    """A stand-in for :func:`lit_rlhf.evaluate.scoring.sample_and_score` whose sample ``j`` of a prompt is
    ``respond(prompt, j)``, scored by the real gold labeler."""
    from lit_rlhf.evaluate.scoring import PolicySamples
    from lit_rlhf.sandbox.labeler import GoldLabeler

    def sample_and_score(policy, tokenizer, prompts, judges, *, samples_per_prompt, **kwargs):
        index = [i for i in range(len(prompts.texts)) for _ in range(samples_per_prompt)]
        texts = [respond(prompts.texts[i], n % samples_per_prompt) for n, i in enumerate(index)]
        gold = [GoldLabeler().score(prompts.records[i], t) for i, t in zip(index, texts)]
        return PolicySamples(index, texts, [len(t) for t in texts], {"gold": gold})

    return sample_and_score


def test_gold_score_evaluation_averages_every_sample_and_is_reproducible(tmp_path, sandbox_model_dir):
    """T=1 evaluation scores all samples_per_prompt responses; the same seed gives the same number."""
    import lit_rlhf.sandbox.callbacks as module
    from lit_rlhf.sandbox.callbacks import GoldScoreEvaluation

    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [json.loads(line) for line in (DATA_DIR / "prompts_eval.jsonl").read_text().splitlines()[:6]],
    )
    evaluation = GoldScoreEvaluation(
        prompts=str(prompts), num_prompts=6, temperature=1.0, samples_per_prompt=4, max_new_tokens=8
    )
    answers = {r.data["prompt"]: " " + r.data["answer"] for r in evaluation.records}

    original = module.sample_and_score
    try:  # 2 exact answers and 2 empty ones per prompt
        module.sample_and_score = _fake_sampler(lambda prompt, j: answers[prompt] if j % 2 == 0 else "")
        sums = evaluation.evaluate(model=None, tokenizer=load_tokenizer(str(TOKENIZER_DIR)))
    finally:
        module.sample_and_score = original
    assert float(sums["gold/score/count"]) == 24
    assert float(sums["gold/score"] / sums["gold/score/count"]) == pytest.approx(0.5)

    model, tokenizer = (
        load_causal_lm(str(sandbox_model_dir), trainable=False),
        load_tokenizer(str(sandbox_model_dir), padding_side="left"),
    )
    first, second = (evaluation.evaluate(model, tokenizer)["gold/score"] for _ in range(2))
    assert float(first) == float(second)
    assert GoldScoreEvaluation(prompts=str(prompts), temperature=0.0, samples_per_prompt=4).samples_per_prompt == 1


def test_heldout_lm_loss_matches_a_direct_computation(sandbox_model_dir):
    tokenizer = load_tokenizer(str(sandbox_model_dir))
    model = load_causal_lm(str(sandbox_model_dir), trainable=False)
    texts = ["the letters a b reversed are b a", "3 plus 4 makes 7"]
    batched = lm_loss_on_texts(model, tokenizer, texts, batch_size=2)
    per_text = []
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]])
        per_text.append((float(model(input_ids=ids, labels=ids).loss), ids.shape[1] - 1))
    expected = sum(loss * n for loss, n in per_text) / sum(n for _, n in per_text)
    assert batched == pytest.approx(expected, rel=1e-4)
