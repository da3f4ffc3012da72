"""`mvg.evaluation`: baselines, scores and tables; with them `mvg.inference`'s prompt slice
selection and volume painting, which the copy-the-prompt baseline must match.

A random model paints garbage, so most checks are about shapes, label values and bookkeeping. Two
stand-in models make exact checks possible: one paints its first prompt target (it must then match
the copy-the-prompt baseline voxel for voxel, which proves the slice selection and the colouring /
decoding round trip), one paints the query (it must then score exactly as the identity baseline).
Stand-ins run at the stored size (80 px), where the resizes are the identity.
"""

from __future__ import annotations

import csv
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from mvg.colouring import PredefinedTable
from mvg.config import preset
from mvg.evaluation import (
    COPY_PROMPT,
    IDENTITY,
    MODEL,
    NoCaseScored,
    copy_prompt,
    evaluate_dataset,
    identity,
    image_scores,
    tables,
    to_csv,
    to_markdown,
)
from mvg.inference import paint_volume, prompt_slice_index
from mvg.model import MVG
from storage.catalog import CaseRecord
from storage.geometry import planar_geometry
from storage.specs import DatasetSpec
from storage.store import Sample, StoredDataset, ZarrStore, prepare_dataset, write_case


# 64 px; decoded from painted levels: the stand-ins below paint (`predict`), they cast no slot votes
CONFIG = preset("tiny-cpu").with_overrides(model={"depth": 2, "embed_dim": 96, "num_heads": 3, "slot_inference": "soft"})
STORED_SIZE = 80  # the phantom store's in-plane size


class CopyPrompt(MVG):
    """Paints the first prompt target whatever the query."""

    def predict(self, query, prompt_images, prompt_targets, task="segmentation"):
        return prompt_targets[:, 0]


class Identity(MVG):
    """Paints the query itself."""

    def predict(self, query, prompt_images, prompt_targets, task="segmentation"):
        return query


class CountingEncodings(MVG):
    """A real model that counts the prompt rows it encodes."""

    encoded = 0

    def encode_prompts(self, prompt_images, prompt_targets, task="segmentation", levels=None):
        self.encoded += prompt_images.shape[0]
        return super().encode_prompts(prompt_images, prompt_targets, task, levels)


@pytest.fixture(scope="module")
def model() -> MVG:
    torch.manual_seed(0)
    return MVG(CONFIG)


def stand_in(kind: type[MVG], size: int = STORED_SIZE) -> MVG:
    return kind(CONFIG.with_overrides(model={"image_size": size}))


def images(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def labels(depth: int, height: int, width: int, empty_every: int = 3) -> np.ndarray:
    """Classes 3 and 7 (not 1, 2: outputs must carry the prompt's values) moving with depth; every
    `empty_every`-th slice holds no foreground, as the end slices of a scan do."""
    maps = np.zeros((depth, height, width), dtype=np.uint8)
    for z in range(depth):
        if z % empty_every == 0:
            continue
        maps[z, height // 5 + z : height // 2 + z, width // 5 : width // 2] = 3
        maps[z, height // 2 : 4 * height // 5, width // 2 + z % 4 : 4 * width // 5] = 7
    return maps


# ------------------------------------------------------------------------------ prompt selection


def test_prompt_slice_index_is_the_same_relative_depth():
    assert [prompt_slice_index(n, 10, 5) for n in range(5)] == [0, 2, 4, 6, 8]
    assert [prompt_slice_index(n, 3, 7) for n in range(7)] == [0, 0, 0, 1, 1, 2, 2]
    assert [prompt_slice_index(n, 5, 5) for n in range(5)] == [0, 1, 2, 3, 4]
    assert [prompt_slice_index(n, 1, 4) for n in range(4)] == [0, 0, 0, 0]
    assert prompt_slice_index(0, 7, 1) == 0
    # exact integers where float division would round 0.29 * 100 to 28.999...
    assert prompt_slice_index(29, 100, 100) == 29
    assert prompt_slice_index(np.int64(4), 10, 5) == 8


@pytest.mark.parametrize("arguments", [(-1, 5, 5), (5, 5, 5), (0, 0, 5), (0, 5, 0), (0.5, 5, 5)])
def test_prompt_slice_index_refuses_what_is_outside_the_volumes(arguments):
    with pytest.raises((ValueError, TypeError)):
        prompt_slice_index(*arguments)


# ------------------------------------------------------------------------------ painting volumes


def test_segmentation_volume_has_query_shape_and_only_known_labels(model):
    prompts = [images((10, 50, 70)), images((4, 90, 60), seed=3)]
    targets = [labels(10, 50, 70), labels(4, 90, 60)]
    painted = paint_volume(model, prompts, targets, images((5, 90, 90), seed=1), "segmentation", batch_size=2)
    assert painted.shape == (5, 90, 90) and painted.dtype == np.int64
    assert set(np.unique(painted)) <= {0, 3, 7}
    assert not painted[0].any()  # both prompt slices at depth 0 are empty: background, whatever was painted
    painted = paint_volume(model, prompts[:1], targets[:1], images((5, 90, 90), seed=1), "segmentation",
                           classes=[3, 7, 9], decode="all")
    assert set(np.unique(painted)) <= {0, 3, 7, 9}


def test_image_volume_is_unit_float32(model):
    prompts = [images((6, 50, 70)).astype(np.float16)]
    painted = paint_volume(model, prompts, [images((6, 50, 70), seed=2)], images((9, 90, 90), seed=1), "synthesis")
    assert painted.shape == (9, 90, 90) and painted.dtype == np.float32
    assert 0 <= painted.min() and painted.max() <= 1


@pytest.mark.parametrize("slot_inference", ["soft", "vote"])
def test_slices_sharing_a_prompt_slice_share_one_encoding(slot_inference):
    torch.manual_seed(0)
    counting = CountingEncodings(CONFIG.with_overrides(model={"slot_inference": slot_inference}))
    # 3 prompt slices for 12 query slices: each prompt slice serves 4 consecutive query slices
    paint_volume(counting, [images((3, 64, 64))], [labels(3, 64, 64, empty_every=9)], images((12, 64, 64)),
                 "segmentation", batch_size=6)
    assert counting.encoded == 4  # batch one holds prompt slices {0, 1}, batch two {1, 2}


@pytest.mark.parametrize("task", ["segmentation", "synthesis"])
def test_painting_without_the_prompt_cache_gives_the_same_volume(task):
    torch.manual_seed(0)
    counting = CountingEncodings(CONFIG)
    prompts = [images((3, 64, 64))]
    targets = [labels(3, 64, 64, empty_every=9)] if task == "segmentation" else [images((3, 64, 64), seed=2)]
    query = images((12, 80, 80), seed=1)
    cached = paint_volume(counting, prompts, targets, query, task, batch_size=6)
    encoded = counting.encoded
    uncached = paint_volume(counting, prompts, targets, query, task, batch_size=6, cache=False)
    assert counting.encoded == encoded  # no prompt went through the cache's encoder
    if task == "segmentation":
        assert (cached == uncached).mean() > 0.999  # labels: only a level exactly between two may flip
    else:
        np.testing.assert_allclose(cached, uncached, atol=1e-5)


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("decode", ["prompt", "all"])
@pytest.mark.parametrize(("prompt_depth", "query_depth"), [(10, 5), (3, 7), (6, 6)])
def test_copy_prompt_model_paints_the_copy_prompt_baseline(prompt_depth, query_depth, decode, per_class):
    targets = labels(prompt_depth, 64, 64)
    painted = paint_volume(stand_in(CopyPrompt, 64), [images((prompt_depth, 64, 64))], [targets],
                           images((query_depth, 64, 64), seed=1), "segmentation", batch_size=4,
                           classes=[1, 3, 7], decode=decode, per_class=per_class)
    baseline = copy_prompt(targets, (query_depth, 64, 64))
    np.testing.assert_array_equal(painted, baseline)
    expected = [targets[n * prompt_depth // query_depth] for n in range(query_depth)]
    np.testing.assert_array_equal(baseline, np.stack(expected))


class PaintsEverywhere(MVG):
    """Per-class passes that disagree: the prompt's class painted at 0.9 where it is, and 0.6
    everywhere else (as a model that over-paints does)."""

    def predict(self, query, prompt_images, prompt_targets, task="segmentation"):
        target = prompt_targets[:, 0]
        return torch.where(target > 0, torch.full_like(target, 0.9), torch.full_like(target, 0.6))


@pytest.mark.parametrize("decode", ["prompt", "all"])
def test_per_class_passes_give_each_voxel_its_brightest_class_and_respect_the_prompt(decode):
    targets = labels(4, 64, 64)
    painted = paint_volume(stand_in(PaintsEverywhere, 64), [images((4, 64, 64))], [targets], images((4, 64, 64), seed=1),
                           "segmentation", classes=[3, 7], decode=decode, per_class=True)
    foreground = targets > 0
    np.testing.assert_array_equal(painted[foreground], targets[foreground])  # 0.9 beats the other pass's 0.6
    for empty in (0, 3):  # slices showing no class: "prompt" decodes them to background
        assert targets[empty].max() == 0 and (painted[empty] == 0).all() == (decode == "prompt")
    background = painted[1:3][~foreground[1:3]]  # both passes paint 0.6 >= 0.5: the lower class wins the tie
    assert background.size and (background == 3).all()


def test_resizing_never_invents_a_class_along_another_class_edge():
    # Model at 64 px, volumes at 96 px. Class 7 (level 1) borders background: resizing the painted
    # levels bilinearly before decoding would pass through class 3's level (1/2) there.
    targets = labels(4, 96, 96)
    painted = paint_volume(stand_in(CopyPrompt, 64), [images((4, 96, 96))], [targets], images((4, 96, 96), seed=1),
                           "segmentation")
    for value in (3, 7):
        near = ndimage.binary_dilation(targets == value, structure=np.ones((1, 3, 3)))
        assert not np.any((painted == value) & ~near)
    assert np.mean(painted == targets) > 0.97


def test_copy_prompt_resizes_labels_by_nearest_pixel():
    targets = labels(4, 40, 40)
    copied = copy_prompt(targets, (2, 80, 80))
    assert copied.dtype == np.int64 and copied.shape == (2, 80, 80)
    np.testing.assert_array_equal(copied, targets[[0, 2]].repeat(2, axis=1).repeat(2, axis=2))


def test_identity_is_the_query_as_float32():
    query = images((3, 20, 20)).astype(np.float16)
    np.testing.assert_array_equal(identity(query), query.astype(np.float32))
    assert identity(query).dtype == np.float32


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "classification"}, "unknown task"),
        ({"prompt_targets": [labels(4, 32, 32) - 1.5]}, "non-negative integers"),
        ({"prompt_images": [images((4, 32, 32)) * 3]}, r"\[0, 1\]"),
        ({"prompt_images": [images((5, 32, 32))]}, "differ in shape"),
        ({"prompt_images": [images((4, 32, 32))] * 4, "prompt_targets": [labels(4, 32, 32)] * 4}, "takes 1 to 3"),
        ({"query": images((32, 32))}, "numpy volume"),
        ({"decode": "some"}, "unknown decode"),
    ],
)
def test_paint_volume_refuses_bad_inputs(model, change, message):
    arguments = {"prompt_images": [images((4, 32, 32))], "prompt_targets": [labels(4, 32, 32)],
                 "query": images((3, 32, 32)), "task": "segmentation"} | change
    with pytest.raises(ValueError, match=message):
        paint_volume(model, **arguments)


# ------------------------------------------------------------------------------ datasets


class MemoryDataset:
    """The read side of a StoredDataset (name, spec, cases, read_volume), held in memory."""

    def __init__(self, spec: DatasetSpec, cases: dict[str, tuple[str, Sample]]):
        self.name, self._spec, self._cases = spec.name, spec, cases

    @property
    def spec(self) -> DatasetSpec:
        return self._spec

    def cases(self, split=None):
        return sorted(case for case, (where, _) in self._cases.items() if split in (None, where))

    def read_volume(self, case):
        return self._cases[case][1]


def inpainting_dataset(splits=("train", "train", "test", "test")) -> MemoryDataset:
    """Cases of different depths (6 to 9 slices) with a voided square inside a mask."""
    spec = DatasetSpec("memory-inpainting", "in memory", "Brain", "MRI", "inpainting", "nnunet",
                       classes={1: "voided"}, target_channel=1)
    cases = {}
    for index, split in enumerate(splits):
        full = images((6 + index, 40, 40), seed=index).astype(np.float16)
        mask = np.zeros(full.shape, dtype=np.uint8)
        mask[:, 10:25, 12:30] = 1
        voided = np.where(mask == 1, np.float16(0), full)
        cases[f"case_{index}"] = (split, Sample(voided, full, mask))
    return MemoryDataset(spec, cases)


@pytest.fixture(scope="module")
def store(phantom_store) -> ZarrStore:
    return ZarrStore(phantom_store)


@pytest.fixture(scope="module")
def segmentation_evaluation(model, store):
    return evaluate_dataset(model, store.dataset("phantom-segmentation"), draws=2, seed=1)


@pytest.fixture(scope="module")
def synthesis_evaluation(model, store):
    return evaluate_dataset(model, store.dataset("phantom-synthesis"), draws=2, seed=1)


def test_segmentation_evaluation_has_a_row_per_case_draw_and_method(segmentation_evaluation, store):
    evaluation, dataset = segmentation_evaluation, store.dataset("phantom-segmentation")
    tests = dataset.cases("test")
    assert len(evaluation.rows) == len(tests) * 2 * 2
    assert {(row["case"], row["draw"], row["method"]) for row in evaluation.rows} == {
        (case, draw, method) for case in tests for draw in (0, 1) for method in (MODEL, COPY_PROMPT)
    }
    for row in evaluation.rows:
        assert set(row["prompts"].split()) <= set(dataset.cases("train"))
        assert 0 <= row["mIoU"] <= 1 and 0 <= row["mDice"] <= 1
        assert len([key for key in row if key.startswith("IoU ")]) == len(dataset.spec.classes)
    assert evaluation.metrics[:2] == ("mIoU", "mDice")
    for method in (MODEL, COPY_PROMPT):
        aggregate = evaluation.summary[method]["mIoU"]
        assert len(aggregate.per_draw) == 2 and math.isfinite(aggregate.std)
        assert aggregate.mean == pytest.approx(np.mean(aggregate.per_draw))
    montage = evaluation.montage
    assert montage.dtype == np.uint8 and montage.ndim == 3 and montage.shape[2] == 3
    assert montage.shape[1] == 5 * 128 and montage.shape[0] > 3 * 128


def test_draws_repeat_with_the_seed_and_change_with_it(model, store, segmentation_evaluation):
    dataset = store.dataset("phantom-segmentation")
    again = evaluate_dataset(model, dataset, draws=2, seed=1)
    assert again.rows == segmentation_evaluation.rows
    other = evaluate_dataset(model, dataset, draws=2, seed=5)
    prompts = {row["prompts"] for row in other.rows} | {row["prompts"] for row in again.rows}
    assert len(prompts) > 1


def test_copy_prompt_model_scores_exactly_the_copy_prompt_baseline(store):
    evaluation = evaluate_dataset(stand_in(CopyPrompt), store.dataset("phantom-segmentation"), draws=2, shots=2)
    model_rows = [row for row in evaluation.rows if row["method"] == MODEL]
    baseline_rows = [row for row in evaluation.rows if row["method"] == COPY_PROMPT]
    assert len(model_rows) == len(baseline_rows) > 0
    for ours, theirs in zip(model_rows, baseline_rows):
        assert (ours["case"], ours["draw"]) == (theirs["case"], theirs["draw"])
        assert {k: v for k, v in ours.items() if k != "method"} == {k: v for k, v in theirs.items() if k != "method"}
    assert evaluation.summary[MODEL]["mIoU"] == evaluation.summary[COPY_PROMPT]["mIoU"]


class PromptLevels(CopyPrompt):
    """Copies the prompt, and keeps the grey levels its prompt targets were coloured with."""

    levels: set

    def predict(self, query, prompt_images, prompt_targets, task="segmentation"):
        self.levels = getattr(self, "levels", set()) | {round(float(v), 5) for v in prompt_targets.unique()}
        return super().predict(query, prompt_images, prompt_targets, task)


def predefined_stand_in(table) -> MVG:
    config = CONFIG.with_overrides(model={"image_size": STORED_SIZE}, objective={"colouring": "predefined", "colour_table": table})
    return PromptLevels(config)


def test_predefined_model_is_prompted_in_the_colours_it_was_trained_with(store):
    dataset = store.dataset("phantom-segmentation")
    classes = sorted(int(c) for c in dataset.spec.classes if int(c))
    table = (("another-dataset", 2), (dataset.name, max(classes)))  # this dataset's levels sit above the other's
    model = predefined_stand_in(table)
    evaluation = evaluate_dataset(model, dataset, draws=1, max_cases=2)
    trained = PredefinedTable(table).colouring(dataset.name, classes).levels
    assert model.levels - {0.0} == {round(level, 5) for level in trained.values()}
    # decoded with the same levels it was prompted in, the copying model scores as the baseline
    assert evaluation.summary[MODEL]["mIoU"] == evaluation.summary[COPY_PROMPT]["mIoU"]
    spread = PromptLevels(CONFIG.with_overrides(model={"image_size": STORED_SIZE}))  # random colouring: the spread palette
    evaluate_dataset(spread, dataset, draws=1, max_cases=2)
    assert spread.levels != model.levels


def test_predefined_model_refuses_a_dataset_it_has_no_colours_for(store):
    dataset = store.dataset("phantom-segmentation")
    with pytest.raises(ValueError, match=f"dataset {dataset.name} has no pre-defined colours in this model"):
        evaluate_dataset(predefined_stand_in((("another-dataset", 2),)), dataset, draws=1, max_cases=1)
    with pytest.raises(ValueError, match="carries no colour table"):
        evaluate_dataset(predefined_stand_in(()), dataset, draws=1, max_cases=1)


def test_identity_model_scores_exactly_the_identity_baseline(store):
    evaluation = evaluate_dataset(stand_in(Identity), store.dataset("phantom-synthesis"))
    assert evaluation.metrics == ("MAE", "PSNR", "SSIM")
    assert evaluation.summary[MODEL] == evaluation.summary[IDENTITY]
    assert 0 < evaluation.summary[IDENTITY]["MAE"].mean < 1


def test_inpainting_is_also_scored_inside_the_mask():
    dataset = inpainting_dataset()
    evaluation = evaluate_dataset(stand_in(Identity, 40), dataset, draws=2)
    assert evaluation.metrics == ("MAE", "PSNR", "SSIM", "MAE (mask)", "PSNR (mask)", "SSIM (mask)")
    assert evaluation.summary[MODEL] == evaluation.summary[IDENTITY]
    assert len(evaluation.rows) == 2 * 2 * 2  # two test cases, two draws, two methods
    row = evaluation.rows[0]
    sample = dataset.read_volume(row["case"])
    expected = image_scores(sample.image.astype(np.float32), sample.target.astype(np.float32), sample.mask.astype(bool))
    assert {metric: row[metric] for metric in evaluation.metrics} == expected
    assert row["MAE (mask)"] > row["MAE"]  # the voided region is where the query differs


def test_shots_are_bounded_by_the_model_and_the_training_cases(model, store):
    dataset = store.dataset("phantom-segmentation")
    evaluation = evaluate_dataset(model, dataset, shots=2)
    assert all(len(set(row["prompts"].split())) == 2 for row in evaluation.rows)
    with pytest.raises(ValueError, match="shots must be 1 to 3"):
        evaluate_dataset(model, dataset, shots=CONFIG.model.max_pairs)
    with pytest.raises(ValueError, match="3 training cases"):
        evaluate_dataset(MVG(CONFIG.with_overrides(model={"max_pairs": 6})), dataset, shots=4)


def test_a_dataset_without_test_cases_is_refused(model):
    with pytest.raises(ValueError, match="no test cases"):
        evaluate_dataset(model, inpainting_dataset(splits=("train", "train")))


# ------------------------------------------------------------------------------ tables


def test_tables_take_the_paper_layouts(segmentation_evaluation, synthesis_evaluation, tmp_path):
    result = tables([synthesis_evaluation, segmentation_evaluation])
    table2, table3 = result["table2"], result["table3"]
    assert [row["method"] for row in table2] == [MODEL, COPY_PROMPT]
    assert list(table2[0]) == ["method", "phantom-segmentation", "mean"]
    assert " ± " in table2[0]["phantom-segmentation"] and " ± " in table2[0]["mean"]
    mean, _ = table2[1]["phantom-segmentation"].split(" ± ")
    assert float(mean) == pytest.approx(segmentation_evaluation.summary[COPY_PROMPT]["mIoU"].mean, abs=5e-4)

    assert [row["method"] for row in table3] == [MODEL, IDENTITY]
    assert list(table3[0]) == ["method"] + [f"phantom-synthesis {metric}" for metric in ("MAE", "PSNR", "SSIM")]

    markdown = to_markdown(table2)
    lines = markdown.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| method | phantom-segmentation | mean |")
    assert to_markdown(segmentation_evaluation.rows).count("\n") == 2 + len(segmentation_evaluation.rows)

    path = to_csv(segmentation_evaluation.rows, tmp_path / "out" / "rows.csv")
    with path.open(newline="") as file:
        read = list(csv.DictReader(file))
    assert len(read) == len(segmentation_evaluation.rows)
    assert float(read[0]["mIoU"]) == segmentation_evaluation.rows[0]["mIoU"]
    assert [p.name for p in path.parent.iterdir()] == ["rows.csv"]  # no temporary file left behind


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640)], ids=["umask-022", "umask-027"])
def test_tables_get_the_mode_the_umask_gives_and_a_failed_write_keeps_the_old_one(tmp_path, monkeypatch, mask, mode):
    """Evaluation and ablation tables land in the user's folders (and MLflow copies them with their
    mode): readable like any file the user writes, not mkstemp's 0600."""
    path = tmp_path / "tables" / "cases.csv"
    saved = os.umask(mask)
    try:
        to_csv([{"case": "a", "mIoU": 0.5}], path)
        to_csv([{"case": "a", "mIoU": 0.25}], path)  # replacing an existing table gives the same mode
    finally:
        os.umask(saved)
    assert path.stat().st_mode & 0o777 == mode

    def broken_rows(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(csv.DictWriter, "writerows", broken_rows)
    with pytest.raises(OSError, match="disk full"):
        to_csv([{"case": "a", "mIoU": 1.0}], path)
    assert path.read_text().splitlines() == ["case,mIoU", "a,0.25"], "the old table is intact"
    assert [p.name for p in path.parent.iterdir()] == ["cases.csv"], "no scratch file left behind"


def test_one_draw_shows_the_mean_alone_and_duplicates_are_refused(model, store):
    evaluation = evaluate_dataset(model, store.dataset("phantom-synthesis"))
    assert math.isnan(evaluation.summary[MODEL]["MAE"].std)
    assert "±" not in tables([evaluation])["table3"][0]["phantom-synthesis MAE"]
    assert tables([evaluation])["table2"] == []
    with pytest.raises(ValueError, match="once"):
        tables([evaluation, evaluation])


# ------------------------------------------------------------------------------ damaged store shards


def damaged_store(root) -> StoredDataset:
    """Two training and three test cases (40 px, 5 to 9 slices) written to a real store, whose
    shards the tests then damage."""
    spec = DatasetSpec("damaged", "damaged", "test", "CT", "segmentation", "manifest", {3: "a", 7: "b"}, "ct")
    directory = prepare_dataset(root, spec)
    for index, split in enumerate(("train", "train", "test", "test", "test")):
        shape = (5 + index, 40, 40)
        record = CaseRecord(case=f"case_{index}", split=split, slices=shape[0], shape=shape, roles=["image", "target"],
                            checksum="x", sources=[], geometry=planar_geometry(shape).to_dict(), spacing=(1.0, 1.0, 1.0), intensity={})
        write_case(directory, record, {"image": images(shape, seed=index).astype(np.float16), "target": labels(*shape)})
    return StoredDataset(directory)


def flip_a_slice_byte(dataset: StoredDataset, case: str, role: str) -> None:
    shard = Path(dataset.directory / case / role / "0" / "c" / "0" / "0" / "0")
    data = bytearray(shard.read_bytes())
    data[40] ^= 0x08  # inside slice 0's compressed bytes
    shard.write_bytes(bytes(data))


def test_a_damaged_test_case_is_reported_failed_and_the_others_still_scored(tmp_path):
    painter = stand_in(CopyPrompt, 40)
    intact = evaluate_dataset(painter, damaged_store(tmp_path / "intact"), draws=2)
    dataset = damaged_store(tmp_path / "damaged")
    flip_a_slice_byte(dataset, "case_3", "image")
    evaluation = evaluate_dataset(painter, dataset, draws=2)
    assert [(row["case"], row["task"]) for row in evaluation.failed] == [("case_3", "segmentation")]
    assert evaluation.failed[0]["reason"].startswith("damaged/case_3/image slice 0: checksum mismatch (shard ")
    assert evaluation.rows == [row for row in intact.rows if row["case"] != "case_3"], "the others scored as before"
    assert not intact.failed


def test_a_damaged_prompt_case_fails_the_test_cases_that_drew_it(tmp_path):
    dataset = damaged_store(tmp_path)
    flip_a_slice_byte(dataset, "case_0", "target")
    evaluation = evaluate_dataset(stand_in(CopyPrompt, 40), dataset, seed=2)
    assert evaluation.failed and evaluation.rows
    assert all(row["reason"].startswith("damaged/case_0/target slice 0: checksum mismatch") for row in evaluation.failed)
    assert {row["prompts"] for row in evaluation.rows} == {"case_1"}
    assert {row["case"] for row in evaluation.failed} | {row["case"] for row in evaluation.rows} == {"case_2", "case_3", "case_4"}


def test_a_dataset_whose_test_cases_are_all_damaged_scores_nothing_and_says_which(tmp_path):
    dataset = damaged_store(tmp_path)
    for case in ("case_2", "case_3", "case_4"):
        flip_a_slice_byte(dataset, case, "target")
    with pytest.raises(NoCaseScored, match=r"dataset damaged: no test case could be read: damaged/case_2/target slice 0: ") as raised:
        evaluate_dataset(stand_in(CopyPrompt, 40), dataset)
    assert [row["case"] for row in raised.value.failed] == ["case_2", "case_3", "case_4"]
    assert pickle.loads(pickle.dumps(raised.value)).failed == raised.value.failed  # as Prefect may carry it


# ------------------------------------------------------------------------------ largest components


def islands_dataset(connected_classes=(3,)) -> MemoryDataset:
    """Classes 3 and 7 as in `labels`; the training cases' class 3 also has a stray island in a far
    corner, which the test cases' truth lacks. A model that copies its prompt paints the island."""
    spec = DatasetSpec("memory-islands", "in memory", "Chest", "MRI", "segmentation", "nnunet",
                       classes={3: "ventricle", 7: "myocardium"}, connected_classes=connected_classes)
    cases = {}
    for index, split in enumerate(("train", "train", "test", "test")):
        truth = labels(6, 40, 40, empty_every=10)
        if split == "train":
            truth[:, 36:39, 36:39] = 3
        cases[f"case_{index}"] = (split, Sample(images(truth.shape, seed=index).astype(np.float16), truth, None))
    return MemoryDataset(spec, cases)


@pytest.mark.parametrize("largest", [True, False])
def test_a_connected_class_keeps_only_its_largest_painted_component(largest):
    copying = CopyPrompt(CONFIG.with_overrides(model={"image_size": 40, "largest_components": largest}))
    evaluation = evaluate_dataset(copying, islands_dataset(), draws=2)
    ours, baseline = (evaluation.summary[method]["IoU ventricle"].mean for method in (MODEL, COPY_PROMPT))
    assert baseline < 1  # the copied island is scored against a truth without it
    if largest:
        assert ours == 1.0  # the island is gone, the ventricle itself is untouched
    else:
        assert ours == baseline
    assert evaluation.summary[MODEL]["IoU myocardium"].mean == 1.0


def test_classes_the_spec_does_not_declare_connected_keep_their_islands():
    copying = CopyPrompt(CONFIG.with_overrides(model={"image_size": 40, "largest_components": True}))
    evaluation = evaluate_dataset(copying, islands_dataset(connected_classes=(7,)), draws=1)
    assert evaluation.summary[MODEL]["mIoU"].mean == evaluation.summary[COPY_PROMPT]["mIoU"].mean < 1
