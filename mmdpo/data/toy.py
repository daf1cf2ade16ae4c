"""A synthetic text preference task with a known reward, for the demo and the learning tests.

Prompts ask for a word; the preferred answer is written mostly in vowels, the rejected one mostly
in consonants. The reward of any text is its vowel fraction, so a policy's samples can be scored
before and after training. For multi-objective training (MODPO) a second reward, the share of letters from
the first half of the alphabet, which the vowel preference knows nothing of, serves as the margin reward.
"""

from __future__ import annotations

import random

from datasets import Dataset

VOWELS = "aeiou"
CONSONANTS = "bcdfghjklmnpqrstvwxz"


def vowel_reward(text: str) -> float:
    """Fraction of letters in ``text`` that are vowels (0 when there are no letters)."""
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c in VOWELS for c in letters) / len(letters) if letters else 0.0


def early_letter_reward(text: str) -> float:
    """Fraction of letters in ``text`` from a to m (0 when there are no letters): the toy task's second objective."""
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c <= "m" for c in letters) / len(letters) if letters else 0.0


def _word(rng: random.Random, main: str, other: str, length: int, purity: float) -> str:
    return "".join(rng.choice(main if rng.random() < purity else other) for _ in range(length))


def toy_groups(num_groups: int, seed: int = 0, purity: float = 0.85) -> Dataset:
    """``num_groups`` preference pairs in the group schema (prompt, candidates, ranks)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_groups):
        topic = _word(rng, CONSONANTS + VOWELS, "", rng.randint(3, 6), 1.0)
        length = rng.randint(4, 10)
        chosen = _word(rng, VOWELS, CONSONANTS, length, purity)
        rejected = _word(rng, CONSONANTS, VOWELS, length, purity)
        rows.append(
            {"prompt": f"Say a word about {topic}:", "candidates": [f" {chosen}", f" {rejected}"], "ranks": [0, 1]}
        )
    return Dataset.from_list(rows)


def toy_step_pairs(num_groups: int, seed: int = 0) -> Dataset:
    """``num_groups`` step-level pairs (the ``steps`` format): a sum solved in two steps, the rejected solution
    right in the first step and wrong in the second."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_groups):
        a, b = rng.randint(1, 49), rng.randint(1, 49)
        wrong = a + b + rng.choice([-10, -1, 1, 10])
        first = f" {a} plus {b}.\n"
        rows.append(
            {"prompt": f"{a}+{b}=?", "chosen_steps": [first, f" = {a + b}"], "rejected_steps": [first, f" = {wrong}"]}
        )
    return Dataset.from_list(rows)


def toy_margin_pairs(num_groups: int, seed: int = 0) -> Dataset:
    """The pairs of :func:`toy_groups` in TRL's pair format, each response with its MODPO margin reward
    (``chosen_margin_rewards`` / ``rejected_margin_rewards``, M = 1: :func:`early_letter_reward`)."""
    rows = []
    for group in toy_groups(num_groups, seed):
        chosen, rejected = group["candidates"]
        rows.append(
            {
                "prompt": group["prompt"],
                "chosen": chosen,
                "rejected": rejected,
                "chosen_margin_rewards": [early_letter_reward(chosen)],
                "rejected_margin_rewards": [early_letter_reward(rejected)],
            }
        )
    return Dataset.from_list(rows)
