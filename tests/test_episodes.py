"""Episode sampling: shapes, the paper's prompt rule, colouring, the task and path mix, determinism,
DataLoader workers, and the PNG baseline giving the same episodes."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from benchmarks.png_baseline import PngEpisodeSource, export_pngs
from mvg.colouring import Colouring
from mvg.config import TASKS, DataConfig, ObjectiveConfig
from mvg.draws import weighted_index
from mvg.episodes import EpisodeSampler, EpisodeStream, collate, dihedral, resized_crop
from mvg.holes import Holes
from storage.ingest import IngestOptions, ingest
from storage.layouts import plan_dataset
from storage.phantoms import write_phantoms
from storage.specs import DatasetSpec
from storage.store import ZarrStore
from tests.conftest import ct_case, write_nnunet

SIZE = 64
DATA = DataConfig(resize=SIZE, crop=48, prompts=1)
OBJECTIVE = ObjectiveConfig()
PNG_STEP = 0.5 / 255 + 1e-6  # an 8-bit PNG pixel is within half a step of the stored float16 value


@pytest.fixture(scope="module")
def store(tmp_path_factory, dask_cluster) -> Path:
    """Phantoms of the four tasks, a segmentation set whose cases differ in depth, and a detection set."""
    work = tmp_path_factory.mktemp("episodes")
    root = work / "store"
    sources = [
        (write_phantoms(task, work / f"Dataset00{i}_{task}", cases=5, seed=i, size=SIZE, slices=12), None)
        for i, task in enumerate(("segmentation", "synthesis", "inpainting", "denoising"))
    ]
    depths = {f"ct_{i:02d}": ct_case(i, shape=(48, 40, 10 + 4 * i)) for i in range(5)}  # 10..26 slices, 48 x 40
    sources.append((write_nnunet(work / "Dataset020_Depths", depths), None))
    lesions = DatasetSpec("lesions", "Lesions", "Abdomen", "CT", "detection", "nnunet", {1: "organ", 2: "vessel"}, "ct")
    sources.append((write_nnunet(work / "Dataset030_Lesions", {f"l_{i}": ct_case(10 + i) for i in range(3)}), lesions))
    for source, spec in sources:
        report = ingest(plan_dataset(source, spec), root, dask_cluster, IngestOptions(size=SIZE))
        assert not report.failed, [r.reason for r in report.failed]
    return root


def sampler(store, data=DATA, objective=OBJECTIVE, **kwargs) -> EpisodeSampler:
    return EpisodeSampler([store], data, objective, **kwargs)


def episodes_of(source, count: int, task: str | None = None, limit: int = 5000) -> list:
    found = []
    for _ in range(limit):
        episode = source.sample()
        if task is None or episode.task == task:
            found.append(episode)
            if len(found) == count:
                return found
    raise AssertionError(f"fewer than {count} {task} episodes in {limit} draws")


def expected_labels(store: Path, episode, pair: str = "query", index: int = 0) -> np.ndarray:
    """The label crop an episode's pair should show, read independently through the zarr API."""
    case, z = episode.source["query"] if pair == "query" else episode.source["prompts"][index]
    top, left = episode.source["crops"]["query"] if pair == "query" else episode.source["crops"]["prompts"][index]
    labels = ZarrStore(store).dataset(episode.dataset).array(case, "target")[z]
    return resized_crop(labels, episode.source["resize"], top, left, episode.query_image.shape[0], labels=True)


def test_shapes_dtypes_and_ranges_for_every_task(store):
    source = sampler(store, replace(DATA, prompts=2))
    assert source.tasks == list(TASKS)
    assert "lesions" in source.skipped and "detection" in source.skipped["lesions"]
    seen = set()
    for episode in episodes_of(source, 120):
        seen.add(episode.task)
        assert episode.prompt_images.shape == episode.prompt_targets.shape == (2, 48, 48)
        assert episode.query_image.shape == episode.query_target.shape == (48, 48)
        for array in (episode.prompt_images, episode.prompt_targets, episode.query_image, episode.query_target):
            assert array.dtype == np.float32
            assert 0.0 <= array.min() and array.max() <= 1.0
        if episode.task != "segmentation":
            assert episode.colouring == {}
        elif episode.query_target.any() or episode.prompt_targets.any():
            assert episode.colouring
    assert seen == set(TASKS)


def test_prompts_come_from_other_cases_at_the_same_relative_depth(store):
    source = sampler(store, replace(DATA, prompts=2), datasets=["depths"])
    depths = ZarrStore(store).dataset("depths")
    relative_depths_differ = False
    for episode in episodes_of(source, 200):
        query_case, n = episode.source["query"]
        n_query = depths.record(query_case).slices
        assert episode.source["slices"]["query"] == n_query
        for case, slice_index in episode.source["prompts"]:
            n_prompt = depths.record(case).slices
            assert case != query_case
            assert depths.record(case).split == "train"
            assert slice_index == n * n_prompt // n_query  # paper 3.3: floor(n * N_prompt / N_query)
            relative_depths_differ |= slice_index != n
    assert relative_depths_differ, "cases of different depths should map slices to other indices"


def test_same_case_prompt_takes_another_slice_of_the_query_case(store):
    source = sampler(store, replace(DATA, same_case_prompt=True))
    for episode in episodes_of(source, 100):
        (prompt_case, prompt_slice), = episode.source["prompts"]
        query_case, query_slice = episode.source["query"]
        assert prompt_case == query_case and prompt_slice != query_slice


def test_queries_prefer_foreground_slices(store):
    source = sampler(store, replace(DATA, foreground_probability=1.0))
    catalog = {name: ZarrStore(store).dataset(name) for name in ("segmentation", "depths", "inpainting")}
    with_foreground = 0
    segmentation = episodes_of(source, 100, "segmentation")
    for episode in segmentation:
        case, z = episode.source["query"]
        assert z in catalog[episode.dataset].record(case).foreground_slices
        with_foreground += bool(episode.query_target.any())
    assert with_foreground >= 0.8 * len(segmentation)  # the crop may miss a small organ
    for episode in episodes_of(source, 50, "inpainting"):
        case, z = episode.source["query"]
        assert z in catalog[episode.dataset].record(case).foreground_slices


@pytest.mark.parametrize("scheme", ["random", "predefined", "binary"])
def test_same_class_same_level_in_prompt_and_query(store, scheme):
    source = sampler(store, replace(DATA, prompts=2), replace(OBJECTIVE, colouring=scheme), datasets=["segmentation", "depths"])
    levels_seen: dict[tuple[str, int], set[float]] = {}
    for episode in episodes_of(source, 60):
        colouring = Colouring(episode.colouring)
        # one mapping paints the query target and every prompt target
        assert np.array_equal(colouring.colour(expected_labels(store, episode)), episode.query_target)
        for i, target in enumerate(episode.prompt_targets):
            assert np.array_equal(colouring.colour(expected_labels(store, episode, "prompt", i)), target)
        levels = list(episode.colouring.values())
        assert len(set(levels)) == len(levels) and all(0 < level <= 1 for level in levels)
        if scheme == "binary":
            assert len(episode.colouring) <= 1
        for cls, level in episode.colouring.items():
            levels_seen.setdefault((episode.dataset, cls), set()).add(level)
    if scheme == "predefined":  # a class keeps its colour across episodes, and datasets do not share colours
        assert all(len(levels) == 1 for levels in levels_seen.values())
        assert source.table.datasets == (("depths", 2), ("segmentation", 7))
        assert sampler(store, datasets=["depths"]).table == source.table  # whatever the filter
        assert len({next(iter(v)) for v in levels_seen.values()}) == len(levels_seen)
    if scheme == "random":
        assert any(len(levels) > 1 for levels in levels_seen.values())


@pytest.mark.parametrize("scheme", ["random", "predefined", "binary"])
def test_decoding_by_the_prompt_gives_the_query_classes_back(store, scheme):
    source = sampler(store, replace(DATA, prompts=2), replace(OBJECTIVE, colouring=scheme), datasets=["segmentation", "depths"])
    checked = 0
    for episode in episodes_of(source, 40):
        query = expected_labels(store, episode)
        prompts = [expected_labels(store, episode, "prompt", i) for i in range(2)]
        shown = np.isin(query, [0, *(c for c in episode.colouring if any((p == c).any() for p in prompts))])
        decoded = Colouring(episode.colouring).decode(episode.query_target, episode.prompt_targets)
        assert np.array_equal(decoded[shown], query[shown])
        checked += int((query[shown] > 0).sum())
    assert checked > 0


def test_task_and_path_mix_follow_the_config(store):
    episodes = episodes_of(sampler(store, seed=3), 400)
    tasks = Counter(e.task for e in episodes)
    assert abs(tasks["segmentation"] / 400 - 0.5) < 0.08
    for task in ("synthesis", "inpainting", "denoising"):
        assert abs(tasks[task] / 400 - 0.5 / 3) < 0.07
    assert all(e.mode == "ar" for e in episodes if e.task == "segmentation")  # paper: segmentation is all AR
    others = [e for e in episodes if e.task != "segmentation"]
    assert abs(sum(e.mode == "mim" for e in others) / len(others) - 0.9) < 0.07
    datasets = Counter(e.dataset for e in episodes if e.task == "segmentation")
    assert set(datasets) == {"segmentation", "depths"} and min(datasets.values()) > 0.3 * tasks["segmentation"]

    # weights are renormalised over the tasks present
    two = episodes_of(sampler(store, datasets=["synthesis", "denoising"], seed=4), 400)
    assert abs(sum(e.task == "synthesis" for e in two) / 400 - 0.5) < 0.08
    mim_segmentation = episodes_of(sampler(store, objective=replace(OBJECTIVE, segmentation_mim_fraction=1.0)), 50, "segmentation")
    assert all(e.mode == "mim" for e in mim_segmentation)


@pytest.mark.parametrize("weighting, power", [("sqrt-slices", 0.5), ("slices", 1.0)])
def test_slice_weightings_draw_datasets_by_their_size_to_a_power(store, weighting, power):
    source = sampler(store, data=replace(DATA, dataset_weighting=weighting), seed=5, include_detection=True)
    sizes = {d.name: sum(d.slices) for d in source.by_task["segmentation"]}
    assert len(set(sizes.values())) > 1, sizes  # the test needs datasets of different sizes
    expected = {name: n**power / sum(m**power for m in sizes.values()) for name, n in sizes.items()}
    drawn = Counter(e.dataset for e in episodes_of(source, 1500, "segmentation", limit=20000))
    for name, share in expected.items():
        assert abs(drawn[name] / 1500 - share) < 0.04, (name, drawn, expected)
    with pytest.raises(ValueError, match="dataset_weighting"):
        replace(DATA, dataset_weighting="by-size")


def test_detection_joins_segmentation_only_when_asked(store):
    source = sampler(store, include_detection=True, datasets=["lesions"])
    episode = source.sample()
    assert episode.task == "segmentation" and episode.dataset == "lesions"
    assert [name for name, _ in source.table.datasets] == ["depths", "lesions", "segmentation"]
    with pytest.raises(ValueError, match="detection"):
        sampler(store, datasets=["lesions"])


def test_same_seed_and_rank_repeat_other_ranks_differ(store):
    def run(**kwargs):
        source = sampler(store, replace(DATA, prompts=2), **kwargs)
        return [source.sample() for _ in range(30)]

    first, again, other_rank = run(seed=7, rank=0, world_size=2), run(seed=7, rank=0, world_size=2), run(seed=7, rank=1, world_size=2)
    for a, b in zip(first, again):
        assert a.source == b.source and a.colouring == b.colouring and a.mode == b.mode
        assert np.array_equal(a.query_image, b.query_image) and np.array_equal(a.prompt_targets, b.prompt_targets)
    assert [e.source for e in first] != [e.source for e in other_rank]

    resumed = sampler(store, replace(DATA, prompts=2), seed=7, rank=0, world_size=2)
    [resumed.sample() for _ in range(10)]
    state = resumed.state_dict()
    fresh = sampler(store, replace(DATA, prompts=2), seed=99)
    fresh.load_state_dict(state)
    assert [fresh.sample().source for _ in range(20)] == [e.source for e in first[10:]]


def test_dihedral_draws_each_of_the_eight_symmetries_and_applies_it_to_the_whole_episode(store):
    """The first draw of a seed is the same episode with and without the symmetry (it is drawn
    last), so the transformed one must be the plain one turned: every prompt and the query alike."""
    seen = set()
    for seed in range(40):
        plain = sampler(store, replace(DATA, prompts=2), seed=seed).sample()
        turned = sampler(store, replace(DATA, prompts=2, dihedral=True), seed=seed).sample()
        assert plain.source["dihedral"] is None
        symmetry = turned.source.pop("dihedral")
        plain.source.pop("dihedral")
        assert turned.source == plain.source and turned.colouring == plain.colouring
        for name in ("prompt_images", "prompt_targets"):
            assert np.array_equal(getattr(turned, name), dihedral(getattr(plain, name), *symmetry))
        for name in ("query_image", "query_target"):
            assert np.array_equal(getattr(turned, name), dihedral(getattr(plain, name)[None], *symmetry)[0])
        seen.add(symmetry)
    assert seen == {(turns, transposed) for turns in range(4) for transposed in (False, True)}


def test_dihedral_tasks_turn_only_their_own_episodes(store):
    """`dihedral_tasks` turns the episodes of the tasks it names, each one the plain episode turned,
    and leaves every other task's episodes as stored."""
    turned_tasks = set()
    for seed in range(60):
        plain = sampler(store, DATA, seed=seed).sample()
        turned = sampler(store, replace(DATA, dihedral_tasks=("denoising",)), seed=seed).sample()
        symmetry = turned.source.pop("dihedral")
        plain.source.pop("dihedral")
        assert turned.task == plain.task and turned.source == plain.source
        if plain.task != "denoising":
            assert symmetry is None and np.array_equal(turned.query_target, plain.query_target)
            continue
        turned_tasks.add(plain.task)
        assert np.array_equal(turned.query_image, dihedral(plain.query_image[None], *symmetry)[0])
        assert np.array_equal(turned.prompt_targets, dihedral(plain.prompt_targets, *symmetry))
    assert turned_tasks == {"denoising"}


def test_dihedral_tasks_must_be_tasks():
    with pytest.raises(ValueError, match="denoise"):
        DataConfig(dihedral_tasks=("denoise",))


def test_dihedral_symmetries_are_the_eight_distinct_maps_of_the_square():
    square = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    images = {dihedral(square, turns, transposed).tobytes() for turns in range(4) for transposed in (False, True)}
    assert len(images) == 8
    assert np.array_equal(dihedral(square, 1, False)[0], np.rot90(square[0]))
    assert np.array_equal(dihedral(square, 0, True)[0], square[0].T)


def test_cut_hole_episodes_void_slices_of_brain_mri_under_one_moved_inpainting_mask(store):
    """Every inpainting episode cut (hole_episodes=1): each pair's target is a stored full slice of
    a brain MRI training case (the synthesis phantoms' either contrast, or the inpainting phantoms'
    own full image), its input that slice at 0 under the inpainting mask at the pair's relative
    depth, mirrored and shifted as the episode says; the query's depth holds a hole."""
    stored = ZarrStore(store)
    crop = DATA.crop
    froms = Counter()
    for episode in episodes_of(sampler(store, replace(DATA, prompts=2, hole_episodes=1.0), seed=5), 60, "inpainting"):
        hole = episode.source["hole"]
        froms[hole["from"]] += 1
        name, role = hole["from"].split("/")
        mask_name, mask_case = hole["mask"].split("/")
        masks = stored.dataset(mask_name).array(mask_case, "mask")
        pairs = [*zip(episode.source["prompts"], episode.source["crops"]["prompts"], episode.prompt_images, episode.prompt_targets)]
        pairs.append((episode.source["query"], episode.source["crops"]["query"], episode.query_image, episode.query_target))
        for (case, z), (top, left), image, target in pairs:
            assert case in stored.dataset(name).cases("train")
            full = stored.dataset(name).array(case, role)
            assert np.array_equal(target, resized_crop(full[z], SIZE, top, left, crop))
            at_depth = masks[min(int((z + 0.5) / full.shape[0] * masks.shape[0]), masks.shape[0] - 1)]
            mask = resized_crop(at_depth, SIZE, top, left, crop, labels=True)
            mask = np.fliplr(mask) if hole["mirrored"] else mask
            mask = ndimage.shift(mask, hole["shift"], order=0, cval=0)
            assert np.array_equal(image, np.where(mask > 0, 0.0, target))
        assert at_depth.any()  # the query's slice of the mask volume holds a hole
    assert {f.split("/")[0] for f in froms} == {"synthesis", "inpainting"}, froms
    assert {f.split("/")[1] for f in froms if f.startswith("synthesis")} == {"image", "target"}


def test_hole_episodes_are_their_share_of_the_inpainting_episodes_and_off_by_default(store):
    for share, low, high in ((0.0, 0.0, 0.0), (0.5, 0.35, 0.65)):
        episodes = episodes_of(sampler(store, replace(DATA, hole_episodes=share), seed=1), 150, "inpainting")
        cut = sum("hole" in e.source for e in episodes) / len(episodes)
        assert low <= cut <= high, (share, cut)


def test_a_hole_moves_by_its_shift_after_its_mirror():
    mask = np.zeros((5, 5), dtype=np.uint8)
    mask[0, 0] = mask[1, 0] = 1
    moved = Holes(masks=None, mask_case=0, shift=(2, -1), mirrored=True).moved(mask)
    assert moved.dtype == mask.dtype and sorted(zip(*np.nonzero(moved))) == [(2, 3), (3, 3)]  # mirrored to column 4, then 2 down, 1 left
    assert not Holes(None, 0, (0, 1), True).moved(mask).any()  # mirrored to column 4, then pushed off the square
    assert sorted(zip(*np.nonzero(Holes(None, 0, (-1, 3), False).moved(mask)))) == [(0, 3)]  # row 0 left the square


def test_collate_shapes_and_flags(store):
    episodes = episodes_of(sampler(store, replace(DATA, prompts=2), seed=1), 6)
    batch = collate(episodes)
    assert batch["prompt_images"].shape == batch["prompt_targets"].shape == (6, 2, 1, 48, 48)
    assert batch["query_image"].shape == batch["query_target"].shape == (6, 1, 48, 48)
    assert batch["prompt_images"].dtype == torch.float32
    assert batch["is_segmentation"].dtype == torch.bool and batch["is_mim"].dtype == torch.bool
    assert batch["task_index"].dtype == torch.long
    assert batch["task_index"].tolist() == [TASKS.index(e.task) for e in episodes]
    assert batch["is_segmentation"].tolist() == [e.task == "segmentation" for e in episodes]
    assert batch["is_mim"].tolist() == [e.mode == "mim" for e in episodes]
    assert torch.equal(batch["query_target"][2, 0], torch.from_numpy(episodes[2].query_target))


def test_stream_workers_do_not_repeat_each_other(store):
    stream = EpisodeStream([store], DATA, OBJECTIVE, batch_size=4, seed=5, batches=3)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    batches = list(loader)
    assert len(batches) == 6  # 3 per worker
    queries = [b["query_image"][i].numpy().tobytes() for b in batches for i in range(4)]
    assert len(set(queries)) == len(queries)
    # worker w draws what EpisodeSampler(seed, rank, worker=w) draws; the loader interleaves workers
    for worker in (0, 1):
        source = stream.sampler(worker)
        expected = collate([source.sample() for _ in range(4)])
        assert torch.equal(batches[worker]["query_image"], expected["query_image"])
        assert torch.equal(batches[worker]["task_index"], expected["task_index"])


def test_forked_workers_read_after_the_parent_used_zarr(store):
    """Workers may fork: zarr-python's loop thread, started here by a volume read, is reset in
    each forked child, and the slice readers hold no thread. A hang fails through the timeout."""
    dataset = ZarrStore(store).dataset("segmentation")
    dataset.read_volume(dataset.cases()[0])
    stream = EpisodeStream([store], DATA, OBJECTIVE, batch_size=2, seed=5, batches=2)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2, multiprocessing_context="fork", timeout=300)
    batches = list(loader)
    assert len(batches) == 4 and all(batch["query_image"].shape == (2, 1, 48, 48) for batch in batches)


def test_png_baseline_gives_the_same_episodes(store, tmp_path):
    png = export_pngs(store, tmp_path / "png", datasets=["segmentation", "synthesis", "inpainting", "denoising"])
    assert (png / "segmentation" / "phantom_000" / "0005_image.png").exists()
    for data in (DATA, replace(DATA, resize=80, crop=64)):  # as stored, and resized on the fly
        kwargs = dict(seed=11, datasets=["segmentation", "synthesis", "inpainting", "denoising"])
        zarr_source, png_source = sampler(store, data, **kwargs), PngEpisodeSource(png, [store], data, OBJECTIVE, **kwargs)
        for ours, baseline in zip(episodes_of(zarr_source, 40), episodes_of(png_source, 40)):
            assert ours.source == baseline.source and ours.colouring == baseline.colouring
            assert np.abs(ours.query_image - baseline.query_image).max() <= PNG_STEP
            assert np.abs(ours.prompt_images - baseline.prompt_images).max() <= PNG_STEP
            if ours.task == "segmentation":  # labels are exact in PNG
                assert np.array_equal(ours.query_target, baseline.query_target)
            else:
                assert np.abs(ours.query_target - baseline.query_target).max() <= PNG_STEP


def test_resized_crop_is_the_crop_of_the_resized_image():
    rng = np.random.default_rng(0)
    image = rng.random((40, 48)).astype(np.float16)
    labels = rng.integers(0, 5, (40, 48)).astype(np.uint8)
    whole = ndimage.zoom(image.astype(np.float32), (80 / 40, 80 / 48), order=1, mode="nearest", grid_mode=True)
    whole_labels = ndimage.zoom(labels, (80 / 40, 80 / 48), order=0, mode="nearest", grid_mode=True)
    assert np.allclose(resized_crop(image, 80, 9, 13, 64), whole[9:73, 13:77], atol=1e-6)
    assert np.array_equal(resized_crop(labels, 80, 9, 13, 64, labels=True), whole_labels[9:73, 13:77])
    same = rng.random((64, 64)).astype(np.float16)
    assert np.array_equal(resized_crop(same, 64, 3, 5, 48), same[3:51, 5:53].astype(np.float32))


def test_refuses_bad_configuration(store):
    with pytest.raises(ValueError, match="crop"):
        sampler(store, DataConfig(resize=64, crop=80))
    with pytest.raises(KeyError, match="nope"):
        sampler(store, datasets=["nope"])
    with pytest.raises(ValueError, match="rank"):
        sampler(store, rank=2, world_size=2)
    with pytest.raises(ValueError, match="no dataset"):
        sampler(store, split="validation")
    with pytest.raises(ValueError, match="hole_episodes"):
        DataConfig(hole_episodes=1.5)


def test_weighted_index_follows_the_shares_and_stays_in_range():
    rng = np.random.default_rng(0)
    shares = np.array([0.2, 0.5, 0.3])
    drawn = np.bincount([weighted_index(np.cumsum(shares), rng) for _ in range(20_000)], minlength=3) / 20_000
    np.testing.assert_allclose(drawn, shares, atol=0.015)

    class Top:  # a draw at the top of [0, 1) against a running sum that rounded below 1
        def random(self):
            return 0.9999999

    assert weighted_index(np.array([0.5, 0.9999990]), Top()) == 1


def test_noise_scale_shows_each_denoising_pair_at_its_own_dose(store):
    """`noise_scale`: a denoising pair's input is its target plus its own noise scaled by a factor
    from the range (clipped to [0, 1]); prompt and query get their own factors; targets, sources
    and every other task's episodes are as drawn without it."""
    factors = []
    for seed in range(40):
        plain = sampler(store, DATA, seed=seed).sample()
        dosed = sampler(store, replace(DATA, noise_scale=(0.5, 2.0)), seed=seed).sample()
        assert dosed.task == plain.task and dosed.source == plain.source
        assert np.array_equal(dosed.query_target, plain.query_target)
        if plain.task != "denoising":
            assert np.array_equal(dosed.query_image, plain.query_image)
            continue
        pairs = [(plain.query_image, dosed.query_image, plain.query_target)]
        pairs += list(zip(plain.prompt_images, dosed.prompt_images, plain.prompt_targets))
        episode_factors = []
        for plain_image, dosed_image, target in pairs:
            noise = plain_image - target
            unclipped = (dosed_image > 0) & (dosed_image < 1)  # where the factor shows exactly
            factor = float((noise * (dosed_image - target))[unclipped].sum() / (noise * noise)[unclipped].sum())
            assert 0.5 <= factor <= 2.0
            np.testing.assert_allclose(dosed_image, np.clip(target + factor * noise, 0, 1), atol=1e-5)
            episode_factors.append(factor)
        factors.append(episode_factors)
    assert factors, "no denoising episode was drawn"
    assert any(len(set(np.round(episode, 4))) > 1 for episode in factors), "prompt and query share one factor"


def test_noise_scale_must_be_a_range():
    with pytest.raises(ValueError, match="noise_scale"):
        DataConfig(noise_scale=(2.0, 0.5))
