"""`mvg.inference.paint`: sizes, dtypes, label values, batching, and every input it refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from mvg.config import preset
from mvg.evaluation import copy_prompt
from mvg.inference import MIRRORS, grid_shifts, paint, prompt_colouring, rotated_colourings, view_mean
from mvg.model import MVG


CONFIG = preset("tiny-cpu").with_overrides(model={"depth": 2, "embed_dim": 96, "num_heads": 3})  # 64 px


class CopyPrompt(MVG):
    """Paints the first prompt target whatever the query: what comes back must be the prompt itself.
    Decoded from its painted levels (`slot_inference="soft"`), as a model without slot votes is."""

    def __init__(self, config):
        super().__init__(config.with_overrides(model={"slot_inference": "soft"}))

    def predict(self, query, prompt_images, prompt_targets, task="segmentation"):
        return prompt_targets[:, 0]


class VoteForThePrompt(MVG):
    """Votes, at every pixel, for the level the first prompt target has there; paints nothing."""

    def predict_class_scores(self, query, prompt_images, prompt_targets, levels, task="segmentation"):
        return (prompt_targets[:, 0] == levels.view(1, -1, 1, 1)).float()

    def predict(self, *args, **kwargs):
        raise AssertionError("a voting model's segmentation is read from its votes, not its painting")


@pytest.fixture(scope="module")
def model() -> MVG:
    torch.manual_seed(0)
    return MVG(CONFIG)


def images(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, height, width), dtype=np.float32)


def labels(count: int, height: int, width: int) -> np.ndarray:
    """Label maps with classes 3 and 7 (not 1, 2: the output must carry the prompt's values)."""
    maps = np.zeros((count, height, width), dtype=np.int64)
    maps[:, height // 5 : height // 2, width // 5 : width // 2] = 3
    maps[:, height // 2 : 4 * height // 5, width // 2 : 4 * width // 5] = 7
    return maps


def test_segmentation_at_other_sizes_gives_prompt_label_values(model):
    painted = paint(model, images(2, 50, 70), labels(2, 50, 70), images(3, 90, 90, seed=1))
    assert painted.shape == (3, 90, 90) and painted.dtype == np.int64
    assert set(np.unique(painted)) <= {0, 3, 7}


def test_synthesis_at_other_sizes_gives_unit_float_images(model):
    painted = paint(model, images(2, 50, 70), images(2, 50, 70, seed=2), images(3, 90, 90, seed=1), task="synthesis")
    assert painted.shape == (3, 90, 90) and painted.dtype == np.float32
    assert 0 <= painted.min() and painted.max() <= 1


@pytest.mark.parametrize("task", ["segmentation", "denoising"])
def test_batch_size_does_not_change_the_result(model, task):
    targets = labels(1, 50, 70) if task == "segmentation" else images(1, 50, 70, seed=2)
    queries = images(5, 90, 90, seed=1)
    one, many = (paint(model, images(1, 50, 70), targets, queries, task, batch_size=size) for size in (1, 16))
    if task == "segmentation":
        np.testing.assert_array_equal(one, many)
    else:
        np.testing.assert_allclose(one, many, atol=1e-5)


def test_copying_the_prompt_returns_its_label_map_exactly():
    prompt = np.zeros((1, 64, 64), dtype=np.uint8)  # at the model's size: no resize either way
    prompt[0, 5:30, 5:20] = 3
    prompt[0, 30:60, 10:50] = 7
    prompt[0, 40:50, 20:30] = 255
    painted = paint(CopyPrompt(CONFIG), images(1, 64, 64), prompt, images(2, 64, 64, seed=1))
    np.testing.assert_array_equal(painted, np.repeat(prompt, 2, axis=0))


def test_a_voting_model_returns_the_class_its_votes_pick():
    prompt = np.zeros((1, 64, 64), dtype=np.uint8)
    prompt[0, 5:30, 5:20] = 3
    prompt[0, 30:60, 10:50] = 7
    voting = VoteForThePrompt(CONFIG)
    assert voting.config.slot_inference == "vote", "tiny-cpu reads its classes from slot votes"
    painted = paint(voting, images(1, 64, 64), prompt, images(2, 80, 80, seed=1))
    np.testing.assert_array_equal(painted, copy_prompt(prompt, (2, 80, 80)))


class FavoursTheBrightest(VoteForThePrompt):
    """Votes for the prompt's level at each pixel, and half again as much for the brightest level
    wherever the prompt shows foreground: an error tied to a level, not to a class."""

    def predict_class_scores(self, query, prompt_images, prompt_targets, levels, task="segmentation"):
        self.passes = getattr(self, "passes", 0) + 1
        votes = super().predict_class_scores(query, prompt_images, prompt_targets, levels, task)
        brightest = int(levels.argmax())
        votes[:, brightest] += 1.5 * (prompt_targets[:, 0, 0] > 0).float()
        return votes


def test_rotated_colourings_hand_each_class_each_level_once():
    colouring = prompt_colouring(np.array([[3, 7, 9]]))
    rotated = rotated_colourings(colouring, 5)
    assert rotated[0] == colouring and len(rotated) == 3, "the volume's own colouring first; one per class at most"
    for value in (3, 7, 9):
        assert sorted(each.levels[value] for each in rotated) == sorted(colouring.levels.values())
    assert rotated_colourings(colouring, 2) == rotated[:2]
    with pytest.raises(ValueError, match="at least 1"):
        rotated_colourings(colouring, 0)


def test_votes_summed_over_colourings_cancel_an_error_tied_to_a_level():
    """With one colouring the class at the brightest level takes all the foreground; summed over
    the rotated colourings each class wears that level once, so the error cancels and the
    prompt's own classes come back."""
    prompt = np.zeros((1, 64, 64), dtype=np.uint8)
    prompt[0, 5:30, 5:20] = 3
    prompt[0, 30:60, 10:50] = 7
    once = paint(FavoursTheBrightest(CONFIG), images(1, 64, 64), prompt, images(2, 64, 64, seed=1))
    assert set(np.unique(once)) == {0, 7}, "one colouring: the brightest class everywhere"
    rotating = FavoursTheBrightest(CONFIG.with_overrides(model={"test_time_colourings": 4}))
    painted = paint(rotating, images(1, 64, 64), prompt, images(2, 64, 64, seed=1))
    np.testing.assert_array_equal(painted, np.repeat(prompt, 2, axis=0).astype(np.int64))
    assert rotating.passes == 2, "two classes: two colourings, whatever more were asked for"


def test_test_time_colourings_need_slot_votes():
    with pytest.raises(ValueError, match="slot_inference = 'vote'"):
        CONFIG.with_overrides(model={"test_time_colourings": 2, "slot_inference": "soft"})
    with pytest.raises(ValueError, match="at least 1"):
        CONFIG.with_overrides(model={"test_time_colourings": 0})


@pytest.mark.parametrize("pairs", [1, 2])
def test_a_binary_trained_model_paints_one_pass_per_class_and_returns_the_label_map(pairs):
    copying = CopyPrompt(CONFIG.with_overrides(objective={"colouring": "binary"}))
    assert copying.colouring == "binary" and MVG(CONFIG).colouring == "random"
    prompt = np.zeros((pairs, 64, 64), dtype=np.uint8)
    prompt[:, 5:30, 5:20] = 3
    prompt[:, 30:60, 10:50] = 7
    passes = []
    real_predict = copying.predict
    copying.predict = lambda *args, **kwargs: passes.append(np.unique(args[2].numpy())) or real_predict(*args, **kwargs)
    painted = paint(copying, images(pairs, 64, 64), prompt, images(3, 40, 40, seed=1), batch_size=4)
    assert [level.tolist() for level in passes] == [[0.0, 1.0], [0.0, 1.0]], "one binary pass per class"
    np.testing.assert_array_equal(painted, copy_prompt(prompt[:1], (3, 40, 40)))  # the prompt, resized by nearest pixel
    assert set(np.unique(painted)) == {0, 3, 7}


def test_resizing_down_and_back_up_keeps_pixel_aligned_labels():
    """A 128 px label map of 2 x 2 blocks survives nearest 128 -> 64 and bilinear 64 -> 128: the
    resizes share pixel centres, so no edge moves by a pixel."""
    coarse = np.zeros((1, 64, 64), dtype=np.int64)
    coarse[0, 10:40, 7:33] = 5
    prompt = coarse.repeat(2, axis=1).repeat(2, axis=2)
    painted = paint(CopyPrompt(CONFIG), images(1, 128, 128), prompt, images(1, 128, 128, seed=1))
    np.testing.assert_array_equal(painted, prompt)


def test_copying_the_prompt_for_synthesis_returns_its_image():
    target = images(1, 64, 64, seed=3)
    painted = paint(CopyPrompt(CONFIG), images(1, 64, 64), target, images(2, 64, 64, seed=1), task="synthesis")
    np.testing.assert_allclose(painted, np.repeat(target, 2, axis=0), atol=1e-6)


def test_classes_get_distinct_palette_levels_one_class_the_binary_level():
    assert prompt_colouring(np.array([[0, 9]])).levels == {9: 1.0}
    levels = prompt_colouring(np.array([[0, 3, 7, 255]])).levels
    assert sorted(levels) == [3, 7, 255] and len(set(levels.values())) == 3 and max(levels.values()) == 1.0


def test_paint_restores_training_mode(model):
    model.train()
    paint(model, images(1, 64, 64), labels(1, 64, 64), images(1, 64, 64))
    assert model.training
    model.eval()


def test_no_queries_gives_an_empty_result(model):
    assert paint(model, images(1, 64, 64), labels(1, 64, 64), images(0, 40, 30)).shape == (0, 40, 30)


def _too_small_foreground() -> np.ndarray:
    target = np.zeros((1, 512, 512), dtype=np.int64)
    target[0, 0, 0] = 1  # nearest 512 -> 64 samples every 8th pixel, from the 5th
    return target


REFUSED = {
    "mismatched prompt shapes": (dict(prompt_targets=labels(1, 50, 60)), "same shape"),
    "2-D query": (dict(queries=images(1, 64, 64)[0]), "queries must be"),
    "2-D prompt": (
        dict(prompt_images=images(1, 64, 64)[0], prompt_targets=labels(1, 64, 64)[0]),
        "prompt_images must be",
    ),
    "unknown task": (dict(task="detection"), "unknown task"),
    "no prompt pairs": (dict(prompt_images=images(0, 64, 64), prompt_targets=labels(0, 64, 64)), "1 to 3"),
    "too many prompt pairs": (dict(prompt_images=images(4, 64, 64), prompt_targets=labels(4, 64, 64)), "1 to 3"),
    "empty prompt target": (dict(prompt_targets=np.zeros((1, 64, 64), np.int64)), "no foreground"),
    "foreground lost in resize": (
        dict(prompt_images=images(1, 512, 512), prompt_targets=_too_small_foreground()),
        "vanishes",
    ),
    "negative labels": (dict(prompt_targets=-labels(1, 64, 64)), "non-negative integers"),
    "fractional labels": (dict(prompt_targets=labels(1, 64, 64) * 0.5), "non-negative integers"),
    "query outside [0, 1]": (dict(queries=images(1, 64, 64) * 1000), r"queries must be images in \[0, 1\]"),
    "synthesis target outside [0, 1]": (
        dict(prompt_targets=labels(1, 64, 64), task="synthesis"),
        "prompt_targets must be images",
    ),
    "zero batch size": (dict(batch_size=0), "batch_size"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_inputs_are_refused_with_a_clear_message(model, case):
    changes, message = REFUSED[case]
    arguments = dict(prompt_images=images(1, 64, 64), prompt_targets=labels(1, 64, 64), queries=images(2, 64, 64))
    with pytest.raises(ValueError, match=message):
        paint(model, **{**arguments, **changes})


def test_several_classes_resized_back_invent_no_class_along_edges():
    """Copying a three-class prompt at 80 px through the 64 px model: every output pixel carries a
    class the prompt has at that place after nearest resizing down and up -- no class appears
    along another's edge (decoding resized grey levels would put class 3 on the 7/background edge)."""
    copier = CopyPrompt(CONFIG)
    prompt = np.zeros((1, 80, 80), dtype=np.int64)
    prompt[0, 10:40, 10:40] = 3
    prompt[0, 40:70, 40:70] = 7
    prompt[0, 10:30, 50:75] = 9
    painted = paint(copier, images(1, 80, 80), prompt, images(2, 80, 80), "segmentation")
    down = torch.nn.functional.interpolate(torch.from_numpy(prompt)[:, None].float(), size=(64, 64), mode="nearest-exact")
    expected = torch.nn.functional.interpolate(down, size=(80, 80), mode="nearest-exact")[0, 0].long().numpy()
    assert np.array_equal(painted[0], expected) and np.array_equal(painted[1], expected)


def test_keeping_known_pixels_paints_only_an_inpainting_query_s_void(model):
    """With `keep_known_pixels` an inpainting query's pixels come back as they were, at the query's
    own size, but for its zero pixels (the void) and their neighbours, which are painted; other
    tasks paint every pixel."""
    queries = images(2, 90, 90, seed=1) * 0.9 + 0.1
    queries[:, 30:60, 20:50] = 0.0  # the void
    prompts, prompt_targets = images(1, 50, 70), images(1, 50, 70, seed=2)
    keeping, painting_all = (MVG(CONFIG.with_overrides(model={"keep_known_pixels": keep})) for keep in (True, False))
    keeping.load_state_dict(model.state_dict())
    painting_all.load_state_dict(model.state_dict())
    painted = paint(keeping, prompts, prompt_targets, queries, task="inpainting")
    plain = paint(painting_all, prompts, prompt_targets, queries, task="inpainting")
    void = ndimage.binary_dilation(queries == 0, structure=np.ones((1, 3, 3)))  # and its blended edge
    assert np.array_equal(painted[~void], queries[~void])
    assert np.array_equal(painted[void], plain[void]) and not np.array_equal(plain[~void], queries[~void])
    assert np.array_equal(paint(keeping, prompts, prompt_targets, queries, task="denoising"),
                          paint(painting_all, prompts, prompt_targets, queries, task="denoising"))


class ShownQueries(MVG):
    """Records the queries and prompt images it is asked to paint from."""

    def predict(self, query, prompt_images, prompt_targets, task="segmentation"):
        self.shown = (query.clone(), prompt_images.clone())
        return super().predict(query, prompt_images, prompt_targets, task)


def test_an_inpainting_void_is_shown_at_the_model_s_void_level(model):
    """`void_level`: an inpainting query's and prompt's zero pixels reach the model at that level, as
    in training; a denoising input's zeros reach it as zeros; the known pixels kept are the query's own."""
    queries = images(2, 64, 64, seed=1) * 0.9 + 0.1
    queries[:, 20:40, 10:30] = 0.0
    prompts, prompt_targets = images(1, 64, 64), images(1, 64, 64, seed=2)
    prompts[:, :8] = 0.0
    marking = ShownQueries(CONFIG.with_overrides(model={"void_level": -1.0, "keep_known_pixels": True}))
    marking.load_state_dict(model.state_dict())
    painted = paint(marking, prompts, prompt_targets, queries, task="inpainting")
    query, prompt = marking.shown
    assert torch.equal(query[:, 0] == -1.0, torch.from_numpy(queries == 0))
    assert bool((prompt[:, 0, 0, :8] == -1.0).all()) and bool((prompt[:, 0, 0, 8:] >= 0).all())
    assert np.array_equal(painted[:, 45:], queries[:, 45:]), "kept pixels come from the unmarked query"
    paint(marking, prompts, prompt_targets, queries, task="denoising")
    query, prompt = marking.shown
    assert bool((query >= 0).all()) and bool((prompt >= 0).all())


class PaintsARamp(MVG):
    """Paints its query plus a left-to-right ramp: an error that does not turn with the image."""

    def predict(self, query, prompt_images, prompt_targets, task="segmentation"):
        return query + torch.linspace(-0.1, 0.1, query.shape[-1])


def test_mirrored_paintings_cancel_an_error_that_does_not_turn_with_the_image():
    """`test_time_flips`: the listed tasks' paintings are averaged over the four mirror images, so
    the ramp, odd under the left-right mirror, cancels; other tasks are painted once, ramp and all."""
    queries = images(2, 64, 64, seed=1) * 0.5 + 0.25
    prompts, prompt_targets = images(1, 64, 64), images(1, 64, 64, seed=2)
    flipping = PaintsARamp(CONFIG.with_overrides(model={"test_time_flips": ("denoising",)}))
    denoised = paint(flipping, prompts, prompt_targets, queries, task="denoising")
    np.testing.assert_allclose(denoised, queries, atol=1e-6)
    synthesised = paint(flipping, prompts, prompt_targets, queries, task="synthesis")
    assert np.abs(synthesised - queries).max() > 0.09


def test_a_mirror_turns_the_query_and_its_prompts_alike():
    """A painting that multiplies the query by the prompt pixel at the same place is the same
    through every mirror only if query and prompts are mirrored together, and undone after."""
    queries, prompt_images, prompt_targets = (torch.rand(2, 1, 8, 8), torch.rand(2, 1, 1, 8, 8), torch.rand(2, 1, 1, 8, 8))

    def pointwise(query, images, targets):
        return query * images[:, 0] + targets[:, 0]

    once = pointwise(queries, prompt_images, prompt_targets)
    for mirror in MIRRORS:
        torch.testing.assert_close(view_mean(pointwise, queries, prompt_images, prompt_targets, [mirror]), once)
    torch.testing.assert_close(view_mean(pointwise, queries, prompt_images, prompt_targets), once)


def test_test_time_flips_name_tasks():
    with pytest.raises(ValueError, match="model.test_time_flips: segmentaton not a task"):
        CONFIG.with_overrides(model={"test_time_flips": ("segmentaton",)})
    with pytest.raises(ValueError, match="model.test_time_shifts: denoise not a task"):
        CONFIG.with_overrides(model={"test_time_shifts": ("denoise",)})


class PaintsThePatchGrid(MVG):
    """Paints its query plus an error that follows the patch grid: +0.1 on the left half of every
    patch column, -0.1 on the right half, wherever the image sits."""

    def predict(self, query, prompt_images, prompt_targets, task="segmentation"):
        column = torch.arange(query.shape[-1]) % self.config.patch_size
        return query + torch.where(column < self.config.patch_size // 2, 0.1, -0.1)


def test_shifted_paintings_cancel_an_error_that_follows_the_patch_grid():
    """`test_time_shifts`: the listed tasks' paintings are averaged over the grid's four half-patch
    phases, so an error fixed to the grid cancels where the image moved under it; other tasks keep it."""
    queries = images(2, 64, 64, seed=1) * 0.5 + 0.25
    prompts, prompt_targets = images(1, 64, 64), images(1, 64, 64, seed=2)
    # no mirrors: a left-right mirror turns this error's sign as well
    shifting = PaintsThePatchGrid(CONFIG.with_overrides(model={"test_time_shifts": ("denoising",), "test_time_flips": ()}))
    denoised = paint(shifting, prompts, prompt_targets, queries, task="denoising")
    np.testing.assert_allclose(denoised, queries, atol=1e-6)
    synthesised = paint(shifting, prompts, prompt_targets, queries, task="synthesis")
    assert np.abs(synthesised - queries).max() > 0.09


def test_a_shift_moves_the_query_and_its_prompts_alike():
    """A pointwise painting is the same at every phase of the grid, and with every mirror at every
    phase, only if query and prompts are rolled together and the painting is rolled back."""
    queries, prompt_images, prompt_targets = (torch.rand(2, 1, 8, 8), torch.rand(2, 1, 1, 8, 8), torch.rand(2, 1, 1, 8, 8))

    def pointwise(query, images, targets):
        return query * images[:, 0] + targets[:, 0]

    once = pointwise(queries, prompt_images, prompt_targets)
    assert grid_shifts(8) == ((0, 0), (0, 4), (4, 0), (4, 4))
    for shift in grid_shifts(4):
        torch.testing.assert_close(view_mean(pointwise, queries, prompt_images, prompt_targets, MIRRORS[:1], [shift]), once)
    torch.testing.assert_close(view_mean(pointwise, queries, prompt_images, prompt_targets, MIRRORS, grid_shifts(4)), once)
