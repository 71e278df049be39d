"""Each rollout correction mode (``correction`` settings: sequence TIS, token / sequence / geometric masks, IcePop)
against a hand computation on one constructed batch, the refusals of combinations that cannot work, and how a mask
reaches the update's loss and normaliser. Token TIS and the PPO glue: tests/test_engine_correction.py."""

from __future__ import annotations

import math

import pytest
import torch
from ppo_support import one_cpu_thread, ppo_world, scored_episodes  # noqa: F401  (fixtures)

from lit_rlhf.algorithms.engine_mismatch import (
    engine_log_ratio,
    icepop_weights,
    sequence_log_ratio,
    sequence_rejection_mask,
    sequence_truncated_importance_weights,
    token_rejection_mask,
    truncated_importance_weights,
)
from lit_rlhf.engines.correction import RolloutCorrectionSettings, engine_logprob_correction
from lit_rlhf.episodes import Episodes
from lit_rlhf.errors import ConfigError

# A constructed batch for the other modes: three sequences, token ratios p_trainer / p_engine as written.
#   row 0: 2, 0.5, 1   (product 1, geometric mean 1)        -> 3 tokens
#   row 1: 4, 1.5, pad (product 6, geometric mean sqrt 6)   -> 2 tokens
#   row 2: 0.1, pad, pad (product 0.1)                       -> 1 token
RATIOS = torch.tensor([[2.0, 0.5, 1.0], [4.0, 1.5, 1.0], [0.1, 1.0, 1.0]])
BATCH_MASK = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
ENGINE = torch.full((3, 3), math.log(0.2))
TRAINER = ENGINE + RATIOS.log()
LOG_RATIO = engine_log_ratio(TRAINER, ENGINE, BATCH_MASK)


def close(tensor: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(tensor, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_sequence_ratios_are_the_product_and_the_geometric_mean_of_the_token_ratios():
    assert LOG_RATIO[~BATCH_MASK].tolist() == [0.0, 0.0, 0.0]  # padding carries no ratio
    assert sequence_log_ratio(LOG_RATIO, BATCH_MASK).exp().tolist() == pytest.approx([1.0, 6.0, 0.1], rel=1e-5)
    geometric = sequence_log_ratio(LOG_RATIO, BATCH_MASK, geometric=True).exp()
    assert geometric.tolist() == pytest.approx([1.0, math.sqrt(6), 0.1], rel=1e-5)


def test_sequence_tis_weights_every_token_by_the_capped_sequence_ratio():
    weights = sequence_truncated_importance_weights(LOG_RATIO, BATCH_MASK, cap=5.0)
    close(weights, [[1.0] * 3, [5.0] * 3, [0.1] * 3])  # min(6, 5) = 5
    huge = sequence_truncated_importance_weights(torch.full((1, 3), 400.0), torch.ones(1, 3, dtype=torch.bool), 2.0)
    close(huge, [[2.0] * 3])  # exp(1200) would overflow: capped in log space


def test_token_mask_keeps_the_tokens_inside_the_band():
    kept = token_rejection_mask(LOG_RATIO, BATCH_MASK, low=0.5, high=2.0)  # both ends inside
    assert kept.tolist() == [[True, True, True], [False, True, False], [False, False, False]]


def test_sequence_and_geometric_masks_drop_whole_sequences():
    by_product = sequence_rejection_mask(LOG_RATIO, BATCH_MASK, low=0.2, high=5.0, geometric=False)
    assert by_product.tolist() == [[True, True, True], [False, False, False], [False, False, False]]  # 6, 0.1 out
    by_mean = sequence_rejection_mask(LOG_RATIO, BATCH_MASK, low=0.2, high=2.5, geometric=True)
    assert by_mean.tolist() == [[True, True, True], [True, True, False], [False, False, False]]  # sqrt 6 = 2.45 in


def test_icepop_weights_kept_tokens_by_their_ratio_and_zeroes_the_rest():
    weights, kept = icepop_weights(LOG_RATIO, BATCH_MASK, low=0.5, high=3.0)
    assert kept.tolist() == [[True, True, True], [False, True, False], [False, False, False]]
    close(weights, [[2.0, 0.5, 1.0], [0.0, 1.5, 0.0], [0.0, 0.0, 0.0]])


def batch_episodes() -> Episodes:
    return scored_episodes(BATCH_MASK, TRAINER, ENGINE)


@pytest.mark.parametrize(
    "settings, weights, kept, metrics",
    [
        (  # sequence TIS, cap 5: the weights of every token of a sequence; 1 of 3 sequences at the cap
            dict(truncated_is_cap=5.0, truncated_is_level="sequence"),
            [[1.0] * 3, [5.0] * 3, [0.1] * 3],
            None,
            {"engine/seq_tis_weight": (1 + 5 + 0.1) / 3, "engine/seq_tis_capped": 1 / 3},
        ),
        (  # token MIS in [0.5, 2]: 3 of the 6 response tokens kept, no weights
            dict(mask="token", mask_high=2.0),
            None,
            [[True, True, True], [False, True, False], [False, False, False]],
            {"engine/masked_tokens": 2 / 6},
        ),
        (  # sequence MIS in [0.2, 5]: rows 1 and 2 out (products 6 and 0.1): 3 of 6 tokens
            dict(mask="sequence", mask_low=0.2, mask_high=5.0),
            None,
            [[True, True, True], [False, False, False], [False, False, False]],
            {"engine/masked_tokens": 3 / 6, "engine/masked_sequences": 2 / 3},
        ),
        (  # geometric MIS in [1/2.5, 2.5]: row 2 out (0.1)
            dict(mask="geometric", mask_high=2.5),
            None,
            [[True, True, True], [True, True, False], [False, False, False]],
            {"engine/masked_tokens": 1 / 6, "engine/masked_sequences": 1 / 3},
        ),
        (  # IcePop in [0.5, 3]: the ratio where kept, mean over the 4 kept tokens (2 + 0.5 + 1 + 1.5) / 4
            dict(mask="icepop", mask_low=0.5, mask_high=3.0),
            [[2.0, 0.5, 1.0], [0.0, 1.5, 0.0], [0.0, 0.0, 0.0]],
            [[True, True, True], [False, True, False], [False, False, False]],
            {"engine/masked_tokens": 2 / 6, "engine/icepop_weight": 5.0 / 4},
        ),
        (  # token TIS (cap 3) and a token mask in [0.5, 2] together: the weights of the tokens the mask keeps
            dict(truncated_is_cap=3.0, mask="token", mask_high=2.0),
            [[2.0, 0.5, 1.0], [3.0, 1.5, 1.0], [0.1, 1.0, 1.0]],
            [[True, True, True], [False, True, False], [False, False, False]],
            {"engine/tis_weight": (2 + 0.5 + 1 + 3 + 1.5 + 0.1) / 6, "engine/tis_capped": 1 / 6},
        ),
    ],
    ids=["sequence_tis", "token_mask", "sequence_mask", "geometric_mask", "icepop", "token_tis_and_mask"],
)
def test_each_correction_mode_matches_the_hand_computation(settings, weights, kept, metrics):
    correction = engine_logprob_correction(batch_episodes(), RolloutCorrectionSettings(**settings))
    if weights is None:
        assert correction.weights is None
    else:
        close(correction.weights, weights)
    assert (correction.mask is None) if kept is None else (correction.mask.tolist() == kept)
    for name, value in metrics.items():
        assert correction.metrics[name].item() == pytest.approx(value, rel=1e-5), name


def test_only_the_tis_cap_set_is_todays_token_tis_bit_for_bit():
    correction = engine_logprob_correction(batch_episodes(), RolloutCorrectionSettings(truncated_is_cap=3.0))
    assert correction.mask is None
    assert torch.equal(correction.weights, truncated_importance_weights(TRAINER, ENGINE, 3.0))
    assert set(correction.metrics) == {
        "engine/logprob_abs_diff",
        "engine/logprob_max_abs_diff",
        "engine/kl",
        "engine/tis_weight",
        "engine/tis_capped",
    }


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(mask="token"), "correction.mask=token needs correction.mask_high"),
        (dict(mask_high=2.0), "mask_low / mask_high set without correction.mask"),
        (dict(mask="token", mask_high=0.5), "correction.mask_high must be >= 1, got 0.5"),
        (dict(mask="token", mask_high=2.0, mask_low=1.5), r"correction.mask_low must be in \(0, 1\], got 1.5"),
        (dict(truncated_is_level="sequence"), "truncated_is_level=sequence needs correction.truncated_is_cap"),
        (dict(mask="icepop", mask_high=5.0, truncated_is_cap=2.0), "icepop already weights"),
        (dict(mask="bands", mask_high=2.0), "correction.mask must be one of token, sequence, geometric, icepop"),
    ],
)
def test_invalid_corrections_are_refused_in_one_line(settings, message):
    with pytest.raises(ConfigError, match=message) as error:
        RolloutCorrectionSettings(**settings)
    assert "\n" not in str(error.value)


def test_a_mask_removes_tokens_from_the_loss_and_its_normaliser(ppo_world):
    """PPO's update reads Episodes.loss_mask: a masked token changes neither the loss nor the step normaliser, so
    the update with a token masked equals the update of the batch without it."""
    from ppo_support import tiny_module

    from lit_rlhf.algorithms import aggregate_loss, step_normalizer

    episodes = batch_episodes()
    kept = torch.tensor([[True, False, True], [True, True, True], [False, True, True]])
    masked = episodes.with_values(correction_mask=kept)
    assert masked.loss_mask.tolist() == [[True, False, True], [True, True, False], [False, False, False]]
    assert episodes.loss_mask is episodes.response_mask
    per_token = torch.arange(9.0).reshape(3, 3)
    for mode, expected in (("token_mean", (0 + 2 + 3 + 4) / 4), ("sequence_mean", ((0 + 2) / 2 + (3 + 4) / 2) / 2)):
        normalizer = step_normalizer(masked.loss_mask, mode, 3)
        assert aggregate_loss(per_token, masked.loss_mask, mode, normalizer).item() == pytest.approx(expected), mode

    module = tiny_module(ppo_world, correction={"mask": "token", "mask_high": 2.0})
    assert module.correction.mask == "token" and module.hparams.correction["mask_high"] == 2.0
