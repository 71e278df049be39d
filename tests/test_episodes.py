"""The episode record: steps return new records (nothing edits one in place), per-episode fields select together,
texts decode on demand, and callbacks find the rollout's summary in a training step's outputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lit_rlhf.episodes import Episodes, RolloutSummary, concat_responses


def episodes(tokenizer=None) -> Episodes:
    made = concat_responses(
        torch.tensor([[0, 40, 41], [42, 43, 44]]),
        torch.tensor([[0, 1, 1], [1, 1, 1]]),
        torch.tensor([[50, 1, 0], [51, 52, 53]]),
        eos_token_id=1,
    )
    return made.with_values(records=[{"answer": "a"}, {"answer": "b"}], tokenizer=tokenizer)


def test_a_step_returns_a_new_record_and_leaves_the_one_it_read():
    first = episodes()
    scored = first.with_values(scores=torch.tensor([1.0, 2.0]), component_scores={"rm": torch.tensor([1.0, 2.0])})
    assert first.scores is None and first.component_scores == {} and scored.scores.tolist() == [1.0, 2.0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.scores = torch.zeros(2)
    assert first.records == ({"answer": "a"}, {"answer": "b"})  # a tuple: the episodes' own


def test_select_takes_every_per_episode_field_alike():
    full = episodes().with_values(
        kl=torch.arange(6.0).view(2, 3),
        component_scores={"rm": torch.tensor([1.0, 2.0])},
        engine_logprobs=-torch.ones(2, 3),
    )
    picked = full.select(torch.tensor([1]))
    assert len(picked) == 1 and picked.records == ({"answer": "b"},) and picked.prompt_length == 3
    assert picked.kl.tolist() == [[3.0, 4.0, 5.0]] and picked.component_scores["rm"].tolist() == [2.0]
    assert picked.responses.tolist() == [[51, 52, 53]] and picked.response_mask.all() and not picked.ended.any()
    assert picked.engine_logprobs.shape == (1, 3)


def test_texts_decode_on_demand_with_the_records_tokenizer(tiny_tokenizer):
    with_tokenizer = episodes(tiny_tokenizer)
    assert with_tokenizer.response_texts == [tiny_tokenizer.decode([50]), tiny_tokenizer.decode([51, 52, 53])]
    assert with_tokenizer.prompt_texts[0] == tiny_tokenizer.decode([40, 41])  # padding left out
    with pytest.raises(ValueError, match="no tokenizer"):
        _ = episodes().response_texts


def test_callbacks_find_the_summary_in_the_step_outputs():
    summary = RolloutSummary(1, episodes())
    assert RolloutSummary.from_outputs({"rollout": summary}) is summary
    assert RolloutSummary.from_outputs({"loss": torch.zeros(())}) is None and RolloutSummary.from_outputs(None) is None
