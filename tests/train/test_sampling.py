import math
from collections import Counter

import pytest

from polyhead.train.sampling import TaskSampler

SIZES = {"big": 800, "mid": 150, "small": 50}
DRAWS = 20_000


def chi_square_ok(counts: Counter, probs: dict[str, float], draws: int) -> bool:
    """Pearson's chi-square against probs, under the 0.999 quantile for 2 degrees of freedom (13.8)."""
    stat = sum((counts[t] - draws * p) ** 2 / (draws * p) for t, p in probs.items())
    return stat < 13.8


def draw(sampler: TaskSampler, n: int) -> list[str]:
    return [sampler.next_task() for _ in range(n)]


def test_proportional_frequencies_match_dataset_sizes():
    sampler = TaskSampler(SIZES, "proportional", seed=1)
    expected = {t: n / 1000 for t, n in SIZES.items()}
    assert sampler.probabilities() == pytest.approx(expected)
    assert chi_square_ok(Counter(draw(sampler, DRAWS)), expected, DRAWS)


@pytest.mark.parametrize("temperature", [2.0, 5.0])
def test_temperature_frequencies_follow_n_to_the_one_over_t(temperature):
    sampler = TaskSampler(SIZES, "temperature", temperature=temperature, seed=2)
    raw = {t: n ** (1 / temperature) for t, n in SIZES.items()}
    expected = {t: v / sum(raw.values()) for t, v in raw.items()}
    assert sampler.probabilities() == pytest.approx(expected)
    assert chi_square_ok(Counter(draw(sampler, DRAWS)), expected, DRAWS)


def test_temperature_one_is_proportional_and_large_is_uniform():
    assert TaskSampler(SIZES, "temperature", temperature=1.0).probabilities() == pytest.approx(
        TaskSampler(SIZES, "proportional").probabilities())
    uniform = TaskSampler(SIZES, "temperature", temperature=1e6, seed=3)
    assert uniform.probabilities() == pytest.approx({t: 1 / 3 for t in SIZES}, abs=1e-5)
    assert chi_square_ok(Counter(draw(uniform, DRAWS)), {t: 1 / 3 for t in SIZES}, DRAWS)


def test_round_robin_is_exact_config_order():
    sampler = TaskSampler(SIZES, "round_robin", seed=4)
    assert draw(sampler, 7) == ["big", "mid", "small", "big", "mid", "small", "big"]


def test_dynamic_favours_the_task_whose_loss_stalls():
    sampler = TaskSampler(SIZES, "dynamic", temperature=1e6, dynamic_temperature=0.1, seed=5)
    assert sampler.probabilities() == pytest.approx({t: 1 / 3 for t in SIZES}, abs=1e-5)  # no history yet
    sampler.update({"big": 2.0, "mid": 2.0, "small": 2.0})
    sampler.update({"big": 1.0, "mid": 1.6, "small": 2.0})  # ratios 0.5, 0.8, 1.0: small stalled
    ratios = sampler.loss_ratios()
    assert ratios == pytest.approx({"big": 0.5, "mid": 0.8, "small": 1.0})
    raw = {t: math.exp(r / 0.1) for t, r in ratios.items()}
    expected = {t: v / sum(raw.values()) for t, v in raw.items()}
    assert sampler.probabilities() == pytest.approx(expected, rel=1e-4)
    counts = Counter(draw(sampler, DRAWS))
    assert counts["small"] > counts["mid"] > counts["big"]
    assert chi_square_ok(counts, expected, DRAWS)
    sampler.update({"small": 1.0})  # small improves again (2.0 -> 1.0): now mid is the stalled one
    assert max(sampler.probabilities().items(), key=lambda kv: kv[1])[0] == "mid"


def test_dynamic_prior_is_the_temperature_distribution():
    sampler = TaskSampler(SIZES, "dynamic", temperature=2.0)
    assert sampler.probabilities() == pytest.approx(TaskSampler(SIZES, "temperature", temperature=2.0).probabilities())


@pytest.mark.parametrize("strategy", ["proportional", "temperature", "round_robin", "dynamic"])
def test_state_round_trip_gives_the_same_future(strategy):
    sampler = TaskSampler(SIZES, strategy, seed=6)
    draw(sampler, 37)
    sampler.update({"big": 1.0, "mid": 1.0})
    sampler.update({"big": 1.1, "mid": 0.7})
    state = sampler.state_dict()
    future = draw(sampler, 200)
    resumed = TaskSampler(SIZES, strategy, seed=999)
    resumed.load_state_dict(state)
    assert draw(resumed, 200) == future
    assert TaskSampler(SIZES, strategy, seed=6).state_dict() != state


def test_same_seed_same_sequence_and_errors():
    assert draw(TaskSampler(SIZES, seed=7), 50) == draw(TaskSampler(SIZES, seed=7), 50)
    assert draw(TaskSampler(SIZES, seed=7), 50) != draw(TaskSampler(SIZES, seed=8), 50)
    with pytest.raises(ValueError, match="'nosuch' is not a sampled task"):
        TaskSampler(SIZES).update({"nosuch": 1.0})
    with pytest.raises(ValueError, match="validation loss nan"):
        TaskSampler(SIZES).update({"big": float("nan")})
    with pytest.raises(ValueError, match="'mid' has 0 training examples"):
        TaskSampler({"big": 3, "mid": 0})
    with pytest.raises(ValueError, match="proportional over"):
        TaskSampler(SIZES, "round_robin").load_state_dict(TaskSampler(SIZES, "proportional").state_dict())


def test_split_batch_for_mixed_steps():
    sampler = TaskSampler(SIZES, "proportional")
    counts = sampler.split_batch(16)
    assert sum(counts.values()) == 16 and min(counts.values()) >= 1
    # 16 * (0.8, 0.15, 0.05) = (12.8, 2.4, 0.8): floors 12, 2, 0 -> 1 (the minimum), one left for the
    # largest remainder (big's 0.8; small's was used up by its minimum)
    assert counts == {"big": 13, "mid": 2, "small": 1}
    assert TaskSampler(SIZES, "round_robin").split_batch(7) == {"big": 3, "mid": 2, "small": 2}
    with pytest.raises(ValueError, match="at least 3"):
        sampler.split_batch(2)
