"""In-context colouring: labels -> grey levels -> labels, for every scheme."""

from __future__ import annotations

import numpy as np
import pytest

from mvg.colouring import PALETTE_SIZE, Colouring, PredefinedTable, binary, colouring_for, random_colouring


@pytest.fixture
def labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 6, (32, 32)).astype(np.uint8)


def test_random_colouring_round_trip_with_noise(labels):
    rng = np.random.default_rng(1)
    colouring = random_colouring([1, 2, 3, 4, 5], rng)
    assert len(set(colouring.levels.values())) == 5, "distinct classes get distinct levels"
    image = colouring.colour(labels)
    assert image.dtype == np.float32 and set(np.unique(image[labels == 0])) == {0.0}
    noisy = image + rng.uniform(-0.45, 0.45, image.shape).astype(np.float32) / PALETTE_SIZE
    assert np.array_equal(colouring.decode(noisy, prompt_target=image), labels)


def test_same_class_same_level_in_prompt_and_query(labels):
    colouring = random_colouring([1, 2, 3, 4, 5], np.random.default_rng(2))
    prompt, query = labels, np.roll(labels, 3, axis=0)
    for value, level in colouring.levels.items():
        assert set(np.unique(colouring.colour(prompt)[prompt == value])) == {level}
        assert set(np.unique(colouring.colour(query)[query == value])) == {level}


def test_decoding_only_offers_levels_present_in_the_prompt(labels):
    colouring = random_colouring([1, 2, 3, 4, 5], np.random.default_rng(3))
    prompt = np.where(labels == 5, 0, labels)  # class 5 absent from the prompt
    decoded = colouring.decode(colouring.colour(labels), colouring.colour(prompt))
    assert 5 not in np.unique(decoded)
    assert np.array_equal(decoded[labels != 5], labels[labels != 5])


def test_binary_colouring_is_one_class_at_level_one(labels):
    single = binary(3)
    assert set(np.unique(single.colour(labels))) == {0.0, 1.0}
    assert np.array_equal(single.decode(single.colour(labels), single.colour(labels)), np.where(labels == 3, 3, 0))


def test_predefined_follows_the_paper_formula():
    table = PredefinedTable((("amos", 15), ("acdc", 3), ("la", 1)))
    # class n of dataset k: sum_{i<k} i * N_i + n
    assert table.index("amos", 4) == 4
    assert table.index("acdc", 2) == 1 * 15 + 2
    assert table.index("la", 1) == 1 * 15 + 2 * 3 + 1
    colouring = table.colouring("acdc", [1, 2, 3])
    assert colouring.levels[3] == pytest.approx(18 / 22)
    with pytest.raises(ValueError):
        table.index("acdc", 4)
    rng = np.random.default_rng(0)
    assert colouring_for("predefined", [1], rng, "la", table).levels == {1: 1.0}


def test_invalid_colourings_are_refused():
    with pytest.raises(ValueError, match="background"):
        Colouring({0: 0.5})
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Colouring({1: 1.5})
    with pytest.raises(ValueError, match="levels in the palette"):
        random_colouring(list(range(1, PALETTE_SIZE + 2)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown colouring"):
        colouring_for("rainbow", [1], np.random.default_rng(0))


def test_random_colouring_of_more_classes_than_the_palette_shows_a_subset():
    """A 24-organ CT slice: one episode colours PALETTE_SIZE of its classes at distinct levels and
    leaves the others background, in prompt and query alike."""
    classes = list(range(1, 25))
    rng = np.random.default_rng(0)
    colouring = colouring_for("random", classes, rng)
    assert len(colouring.levels) == PALETTE_SIZE and set(colouring.levels) <= set(classes)
    assert len(set(colouring.levels.values())) == PALETTE_SIZE
    labels = np.arange(25).reshape(5, 5)
    coloured = colouring.colour(labels)
    hidden = [c for c in classes if c not in colouring.levels]
    assert np.all(coloured[np.isin(labels, hidden)] == 0)
