"""Over-optimisation measurement: the probe's gold / proxy / KL on one policy's samples, and the
``lit-rlhf sandbox overopt`` plumbing on its smallest settings."""

from __future__ import annotations

import json

import pytest
import torch

from lit_rlhf.models.heads import sequence_rewards
from lit_rlhf.models.loading import load_causal_lm, load_scalar_model, load_tokenizer
from lit_rlhf.models.saving import save_hf_directory
from lit_rlhf.sandbox.paths import BASE_CONFIG, BASE_MODEL_DIR, DATA_DIR, TOKENIZER_DIR


@pytest.fixture(scope="module")
def random_policy_dir(tmp_path_factory):
    """A random-init sandbox-sized model: far from the shipped base model, so KL to it is large."""
    out = tmp_path_factory.mktemp("random_policy")
    torch.manual_seed(0)
    return save_hf_directory(load_causal_lm(str(BASE_CONFIG)), load_tokenizer(str(TOKENIZER_DIR)), out)


def test_response_logprob_sums_match_a_plain_forward_of_each_sequence():
    from lit_rlhf.data.records import FieldMap, read_records
    from lit_rlhf.data.tokenize import render_prompt
    from lit_rlhf.evaluation import response_logprob_sums, sample_episodes

    model = load_causal_lm(str(BASE_MODEL_DIR), trainable=False)
    tokenizer = load_tokenizer(str(BASE_MODEL_DIR), padding_side="left")
    prompts = [render_prompt(tokenizer, r, FieldMap()) for r in read_records(str(DATA_DIR / "prompts_eval.jsonl"))[:3]]
    torch.manual_seed(0)
    (batch,) = sample_episodes(model, tokenizer, prompts, max_new_tokens=6, num_return_sequences=2, batch_size=8)
    sums = response_logprob_sums(model, batch)
    for row in range(len(batch)):  # unpadded: the prompt's real tokens, then the response up to its first EOS
        keep = batch.attention_mask[row].bool()
        ids = batch.input_ids[row][keep].unsqueeze(0)
        n_response = int(batch.response_mask[row].sum())
        logprobs = (
            torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        )
        assert float(sums[row]) == pytest.approx(float(logprobs[-n_response:].sum()), abs=1e-4)


def test_probe_measures_gold_proxy_and_kl_on_the_same_samples(random_policy_dir):
    from lit_rlhf.sandbox.callbacks import GoldProxyKLProbe, score_samples
    from lit_rlhf.sandbox.labeler import GoldLabeler

    tokenizer = load_tokenizer(str(BASE_MODEL_DIR), padding_side="left")
    base = load_causal_lm(str(BASE_MODEL_DIR), trainable=False)
    reward_model = load_scalar_model(str(BASE_MODEL_DIR), trainable=False)  # a random head: any scalar will do
    probe = GoldProxyKLProbe(
        prompts=str(DATA_DIR / "prompts_eval.jsonl"), num_prompts=6, samples_per_prompt=3, max_new_tokens=8
    )
    probe._reference, probe._reward_model = base, reward_model

    same = probe.measure(base, tokenizer)
    assert float(same["count"]) == 18
    assert float(same["kl"]) == 0.0  # the reference itself: every log-ratio is exactly 0
    assert 0.0 <= float(same["gold"]) / 18 <= 1.0
    assert probe.measure(base, tokenizer)["gold"] == same["gold"]  # seeded: the same samples every time

    far = probe.measure(load_causal_lm(str(random_policy_dir), trainable=False), tokenizer)
    assert float(far["kl"]) / 18 > 5.0  # random weights are many nats from the base model

    # The proxy is the RM's centred score of exactly the responses that were gold-scored.
    scored = score_samples(
        base, tokenizer, probe.records[:2], reward_model=reward_model, samples_per_prompt=2, max_new_tokens=8, seed=1
    )
    assert scored.prompt_index == [0, 0, 1, 1] and scored.logratio is None
    labeler = GoldLabeler()
    assert scored.scores["gold"] == [
        labeler.score(probe.records[i].data, t) for i, t in zip(scored.prompt_index, scored.responses)
    ]
    from lit_rlhf.data.records import FieldMap
    from lit_rlhf.data.tokenize import render_prompt

    prompt = render_prompt(tokenizer, probe.records[0], FieldMap())
    ids = (
        tokenizer(prompt)["input_ids"]
        + tokenizer(scored.responses[0], add_special_tokens=False)["input_ids"]
        + [tokenizer.eos_token_id]
    )
    if len(tokenizer(scored.responses[0], add_special_tokens=False)["input_ids"]) < 8:  # the response ended with EOS
        expected = sequence_rewards(reward_model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
        assert scored.scores["proxy"][0] == pytest.approx(float(expected), abs=1e-4)


def test_evaluated_policy_is_the_exported_one_unless_asked_for_the_trained_one():
    import contextlib

    from lit_rlhf.evaluation import evaluated_policy

    trained, averaged = (
        load_causal_lm(str(BASE_MODEL_DIR), trainable=False),
        load_causal_lm(str(BASE_MODEL_DIR), trainable=False),
    )

    class Stage:  # what a stage module offers: its trained policy and the exported weights in a block
        policy = trained

        @contextlib.contextmanager
        def evaluation_weights(self):
            yield averaged

    with evaluated_policy(Stage()) as model:
        assert model is averaged
    with evaluated_policy(Stage(), "trained") as model:
        assert model is trained
    with evaluated_policy(type("RewardStage", (), {"model": load_scalar_model(str(BASE_MODEL_DIR))})()) as model:
        assert model is None  # a scalar model cannot generate


def test_probe_refuses_bad_options():
    from lit_rlhf.sandbox.callbacks import GoldProxyKLProbe

    with pytest.raises(ValueError, match="every_n_rollouts"):
        GoldProxyKLProbe(prompts=str(DATA_DIR / "prompts_eval.jsonl"), every_n_rollouts=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        GoldProxyKLProbe(prompts=str(DATA_DIR / "prompts_eval.jsonl"), temperature=0.0)


def test_over_optimised_needs_gold_down_and_proxy_up():
    from lit_rlhf.sandbox.overopt import fit_curve, over_optimised

    rising = [{"kl": k, "gold": 0.4 + 0.05 * k, "proxy": 0.1 * k} for k in range(6)]
    peaked = [{"kl": k, "gold": 0.4 + 0.1 * k - 0.03 * k * k, "proxy": 0.1 * k} for k in range(6)]
    assert not over_optimised(rising)
    assert over_optimised(peaked)
    assert not over_optimised([dict(p, proxy=-p["proxy"]) for p in peaked])  # proxy falling too: not the proxy's fault
    fits = fit_curve("rl", peaked)
    assert fits["gold"]["observed_peak_kl"] == pytest.approx(2) and fits["gold"]["start"] == pytest.approx(0.4)
    assert fit_curve("rl", peaked[:2])["gold"]["alpha"] is None  # too few points: reported, not a crash


def test_overopt_command_writes_table_plot_and_fits(in_scratch_dir):
    """The command's plumbing on its smallest settings: the shipped base model stands in for SFT and the
    base model with a random scalar head for the proxy RM (RM training is the `sandbox run` test's)."""
    from lit_rlhf.cli import main

    rm = save_hf_directory(
        load_scalar_model(str(BASE_MODEL_DIR)), load_tokenizer(str(BASE_MODEL_DIR)), in_scratch_dir / "rm"
    )
    main(
        [
            "sandbox",
            "overopt",
            "--out",
            "runs/overopt",
            "--fast",
            "true",
            "--sft",
            str(BASE_MODEL_DIR),
            "--rm",
            str(rm),
            "--rollouts",
            "2",
            "--probe_every",
            "1",
            "--probe_prompts",
            "4",
            "--probe_samples",
            "2",
            "--bon_prompts",
            "4",
            "--bon_samples",
            "4",
            "--ptx",
            "false",
        ]
    )
    root = in_scratch_dir / "runs/overopt"
    results = json.loads((root / "overopt.json").read_text())
    bon = results["best_of_n"]
    assert [p["n"] for p in bon] == [1, 2, 4]
    assert all(p["kl_sampled"] <= p["kl"] + 1e-9 for p in bon)  # repeated responses only lower it
    assert bon[0]["kl"] == 0.0 and bon[-1]["proxy"] >= bon[0]["proxy"]  # best-of-n by proxy raises the proxy
    assert results["curves"]["best-of-n"]["fits"]["proxy"]["alpha"] is not None
    ppo = results["curves"]["PPO"]["points"]
    assert [p["rollout"] for p in ppo] == [0, 1, 2] and ppo[0]["kl"] == 0.0
    md = (root / "overopt.md").read_text()
    assert "| best-of-n | gold |" in md

    # The json holds what the code computed from the runs' own records: PPO's points are the probe's history
    # file, best-of-n's are the SFT samples drawn again with the same seed, and each fit is refitted from its points.
    from lit_rlhf.sandbox.overopt import best_of_n_curve, fit_curve, read_history

    assert ppo == read_history(root / "ppo/probe.jsonl")
    assert bon == best_of_n_curve(str(BASE_MODEL_DIR), str(rm), str(DATA_DIR / "prompts_eval.jsonl"), 4, 4, 24, seed=0)
    for title, form in (("best-of-n", "bon"), ("PPO", "rl")):
        curve = results["curves"][title]
        refitted = fit_curve(form, curve["points"])
        assert json.dumps(curve["fits"], sort_keys=True) == json.dumps(refitted, sort_keys=True), title
    for p in bon:  # the table shows the same numbers
        assert f"| {p['n']} | {p['kl']:.3f} | {p['kl_sampled']:.3f} | {p['gold']:.3f} | {p['proxy']:.3f} |" in md
    for p in ppo:
        kl, gold, proxy = p["kl"], p["gold"], p["proxy"]
        assert f"| {int(p['rollout'])} | {kl:.3f} | {kl**0.5:.3f} | {gold:.3f} | {proxy:.3f} |" in md

    # The figure: one panel per curve (best-of-n, PPO) of 5.2 x 4.2 inches at 110 dpi. Best-of-n: gold (orange) and
    # proxy (blue) points with their fitted curves (measured: ~1000 pixels each), the measured gold peak (red star,
    # ~280 with its legend entry). PPO's two steps leave every point at KL 0: its star (on the gold points) and
    # proxy points (measured: 283 red, 124 blue).
    from figure_support import assert_plot

    assert_plot(
        root / "overopt.png",
        (1144, 462),
        [{"tab:orange": 300, "tab:blue": 300, "tab:red": 150}, {"tab:red": 150, "tab:blue": 80}],
    )

    # The probe measured the policy as exported (the EMA weights, not the trained ones): measuring the
    # exported directory again with the same seed reproduces the last point exactly.
    from lit_rlhf.sandbox.callbacks import GoldProxyKLProbe

    probe = GoldProxyKLProbe(prompts=str(DATA_DIR / "prompts_eval.jsonl"), num_prompts=4, samples_per_prompt=2)
    probe._reference, probe._reward_model = (
        load_causal_lm(str(BASE_MODEL_DIR), trainable=False),
        load_scalar_model(str(rm), trainable=False),
    )
    sums = probe.measure(load_causal_lm(str(root / "ppo/model"), trainable=False), load_tokenizer(str(BASE_MODEL_DIR)))
    for key in ("gold", "kl", "proxy"):
        assert float(sums[key] / sums["count"]) == pytest.approx(ppo[-1][key], abs=1e-5), key


def test_report_plot_takes_gold_proxy_and_kl_from_the_probe_only(tmp_path):
    """The regular report's gold_vs_kl.png: every point is one probe measurement (one policy, one set of
    samples), never the trained policy's rollout KL paired with another policy's gold score."""
    from lit_rlhf.sandbox.report import plot_gold_vs_kl, probe_points

    rows = [
        {"step": 0, "probe/kl": 0.0, "probe/gold": 0.45, "probe/proxy": 0.1},
        {"step": 4, "rollout/kl": 9.0, "rollout/reward": 3.0},  # the trained policy's rollout: not a plot point
        {"step": 24, "probe/kl": 0.7, "probe/gold": 0.6, "probe/proxy": 0.4},
        {"step": 24, "gold/score": 0.1},  # a validation-time gold score of another policy: not a plot point
    ]
    assert probe_points(rows) == [(0.0, 0.45, 0.1), (0.7, 0.6, 0.4)]
    from figure_support import TAB, assert_plot, colour_pixels

    # 10 x 4 inches at 100 dpi; gold on the left, proxy on the right, one colour per run (C0 blue, then C1 orange).
    # (Each line across a panel: ~1000 pixels of its colour, measured; its legend entry alone: ~100.)
    one = assert_plot(plot_gold_vs_kl({"PPO": rows}, tmp_path / "plot.png"), (1000, 400), [{"tab:blue": 300}] * 2)
    assert colour_pixels(one, TAB["tab:orange"]) == 0  # one run: one colour (the check tells series apart)
    ptx = [
        dict(r, **{"probe/gold": r["probe/gold"] - 0.2, "probe/proxy": r["probe/proxy"] + 0.3})
        for r in rows
        if "probe/kl" in r
    ]
    two = plot_gold_vs_kl({"PPO": rows, "PPO-ptx": ptx}, tmp_path / "two.png")
    assert_plot(two, (1000, 400), [{"tab:blue": 300, "tab:orange": 300}] * 2)
    assert plot_gold_vs_kl({"PPO": rows[1:2]}, tmp_path / "none.png") is None
