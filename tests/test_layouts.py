"""Layouts: nnU-Net v2 (channels, imagesTs), MSD (4-D files, ._ junk), manifests, splits."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from storage.ingest import IngestOptions, ingest
from storage.layouts import LayoutError, assign_splits, declared_labels, plan_dataset
from storage.specs import get_spec
from storage.store import ZarrStore
from tests.conftest import LPS_AFFINE, ct_case, write_nnunet


def test_split_is_stable_and_holds_cases_out():
    cases = [f"case_{i:03d}" for i in range(50)]
    splits = assign_splits(cases, 0.2)
    assert sum(v == "test" for v in splits.values()) == 10
    assert assign_splits(list(reversed(cases)), 0.2) == splits, "order of discovery must not matter"
    grown = assign_splits(cases + [f"case_{i:03d}" for i in range(50, 60)], 0.2)
    moved = [c for c in cases if grown[c] != splits[c]]
    assert len(moved) <= 3, "adding cases barely reshuffles the old ones"
    assert assign_splits(["only"], 0.2) == {"only": "train"}
    assert sorted(assign_splits(["a", "b"], 0.2).values()) == ["test", "train"]


def test_nnunet_channels_and_labelled_test_folder(tmp_path, dask_cluster):
    root = tmp_path / "Dataset070_Brain"
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, folder, cases in (("Tr", "imagesTr", ["b1", "b2", "b3"]), ("Ts", "imagesTs", ["b9"])):
        for case in cases:
            for channel in range(4):
                data = rng.random((20, 24, 6)).astype(np.float32) + channel
                nib.save(nib.Nifti1Image(data, LPS_AFFINE), root / folder / f"{case}_{channel:04d}.nii.gz")
            labels = np.zeros((20, 24, 6), np.uint8)
            labels[5:10, 5:10, 2:4] = 1
            nib.save(nib.Nifti1Image(labels, LPS_AFFINE), root / f"labels{split}" / f"{case}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "t1n", "1": "t1c", "2": "t2w", "3": "t2f"},
        "labels": {"background": 0, "tumour": [1], "whole": [1]},
        "file_ending": ".nii.gz",
    }))
    plan = plan_dataset(root, get_spec("brats-gli"))
    assert [(c.case, c.split, len(c.channels)) for c in plan.cases] == [("b9", "test", 4), ("b1", "train", 4), ("b2", "train", 4), ("b3", "train", 4)]
    plan.spec = plan.spec.with_overrides(name="brats-t1n-t2f", target_channel=3)
    report = ingest(plan, tmp_path / "store", dask_cluster, IngestOptions(size=32))
    assert report.counts()["ingested"] == 4
    dataset = ZarrStore(tmp_path / "store").dataset("brats-t1n-t2f")
    assert dataset.cases("test") == ["b9"]
    assert dataset.record("b1").roles == ["image", "target"], "synthesis stores two images and no labels"


def test_msd_four_d_files_and_resource_forks(tmp_path, dask_cluster):
    root = tmp_path / "Task01_Tiny"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(3):
        image, labels = ct_case(i)
        nib.save(nib.Nifti1Image(np.stack([image, image // 2], axis=-1), LPS_AFFINE), root / "imagesTr" / f"tiny_{i}.nii.gz")
        nib.save(nib.Nifti1Image(labels, LPS_AFFINE), root / "labelsTr" / f"tiny_{i}.nii.gz")
        training.append({"image": f"./imagesTr/tiny_{i}.nii.gz", "label": f"./labelsTr/tiny_{i}.nii.gz"})
    (root / "imagesTr" / "._tiny_0.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    training.append({"image": "./imagesTr/._tiny_0.nii.gz", "label": "./labelsTr/._tiny_0.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Tiny", "modality": {"0": "CT", "1": "CT-half"}, "labels": {"0": "background", "1": "organ", "2": "vessel"},
        "training": training, "test": [],
    }))
    plan = plan_dataset(root)
    assert plan.spec.layout == "msd" and plan.spec.name == "tiny" and plan.spec.normalisation == "ct"
    assert sorted(c.case for c in plan.cases) == ["tiny_0", "tiny_1", "tiny_2"]
    assert declared_labels(json.loads((root / "dataset.json").read_text())) == {1: "organ", 2: "vessel"}
    report = ingest(plan, tmp_path / "store", dask_cluster, IngestOptions(size=32))
    assert report.counts() == {"ingested": 3, "skipped": 0, "failed": 0}, [r.reason for r in report.failed]


def test_csv_manifest_rows_with_keys_splits_and_typos(tmp_path):
    write_nnunet(tmp_path / "data", {"a": ct_case(1), "b": ct_case(2)})
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_text(
        "case,image,target,split,imgae_key\n"
        "a,imagesTr/a_0000.nii.gz,labelsTr/a.nii.gz,train,\n"
        "b,imagesTr/b_0000.nii.gz,labelsTr/b.nii.gz,test,\n"
    )
    plan = plan_dataset(manifest)
    assert not plan.cases and len(plan.problems) == 2
    assert "unknown column(s) imgae_key" in plan.problems[0].reason
    manifest.write_text("case,image,target,split\na,imagesTr/a_0000.nii.gz,labelsTr/a.nii.gz,train\nb,imagesTr/b_0000.nii.gz,labelsTr/b.nii.gz,val\n")
    plan = plan_dataset(tmp_path / "data")  # a folder holding manifest.csv is read through it
    assert [(c.case, c.split) for c in plan.cases] == [("a", "train"), ("b", "val")]


def test_folders_that_are_not_datasets_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="not a dataset folder"):
        plan_dataset(tmp_path / "empty")
    root = write_nnunet(tmp_path / "Dataset080_Odd", {"a": ct_case(1)})
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "mvg": {"tsak": "segmentation"}}))
    with pytest.raises(LayoutError, match="unknown keys in its mvg block: tsak"):
        plan_dataset(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(LayoutError, match="not valid JSON"):
        plan_dataset(root)


def test_manifest_stacks_slices_and_reads_h_w_d_volumes_by_slice_axis(tmp_path, dask_cluster):
    import h5py

    rng = np.random.default_rng(7)
    volume = rng.random((3, 8, 8)).astype(np.float32)  # (D, H, W)
    labels = (volume > 0.5).astype(np.uint8)
    with h5py.File(tmp_path / "hwd.h5", "w") as file:  # stored (H, W, D), as some releases do
        file["image"], file["label"] = np.transpose(volume, (1, 2, 0)), np.transpose(labels, (1, 2, 0))
    for k in range(3):
        with h5py.File(tmp_path / f"s_slice_{k}.h5", "w") as file:
            file["image"], file["label"] = volume[k], labels[k]
    slices = [f"s_slice_{k}.h5" for k in range(3)]
    rows = [
        {"case": "hwd", "image": "hwd.h5", "image_key": "image", "target": "hwd.h5", "target_key": "label", "slice_axis": 2},
        {"case": "stacked", "image": slices, "image_key": "image", "target": slices, "target_key": "label"},
        {"case": "bad", "image": "hwd.h5", "slice_axis": "z"},
    ]
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "hwd", "classes": {"1": "bright"}, "cases": rows}))
    plan = plan_dataset(tmp_path)
    assert [p.case for p in plan.problems] == ["bad"] and "slice_axis 'z'" in plan.problems[0].reason
    assert plan.cases[0].channels[0].slice_axis == 2 and len(plan.cases[1].channels[0].stack) == 3
    report = ingest(plan, tmp_path / "store", dask_cluster, IngestOptions(size=8))
    assert report.counts() == {"ingested": 2, "skipped": 0, "failed": 1}
    dataset = ZarrStore(tmp_path / "store").dataset("hwd")
    for case in ("hwd", "stacked"):
        np.testing.assert_array_equal(dataset.read_volume(case).target, labels)
        assert dataset.read_volume(case).image.shape == (3, 8, 8)
    # the slice axis is part of what a case is made from: changing it re-ingests an unchanged file
    rows[0]["slice_axis"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "hwd", "classes": {"1": "bright"}, "cases": rows[:2]}))
    again = ingest(plan_dataset(tmp_path), tmp_path / "store", dask_cluster, IngestOptions(size=8))
    assert {r.case: r.status for r in again.results} == {"hwd": "ingested", "stacked": "skipped"}
    (tmp_path / "s.csv").write_text("case,image,slice_axis\nc,hwd.h5,-1\n")
    assert plan_dataset(tmp_path / "s.csv").cases[0].channels[0].slice_axis == -1


def test_a_manifest_declares_its_connected_classes(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"")  # planning reads no pixels
    header = {"name": "hearts", "task": "segmentation", "classes": {"1": "ventricle", "2": "scar"},
              "connected_classes": [1], "cases": [{"case": "a", "image": "scan.png", "target": "scan.png"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(header))
    assert plan_dataset(tmp_path).spec.connected_classes == (1,)
    header["connected_classes"] = [3]
    (tmp_path / "manifest.json").write_text(json.dumps(header))
    with pytest.raises(LayoutError, match=r"connected_classes \[3\] are not among its classes"):
        plan_dataset(tmp_path)


def test_a_dataset_json_mvg_block_declares_connected_classes(tmp_path):
    root = write_nnunet(tmp_path / "Dataset081_Organ", {"a": ct_case(1)})
    description = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps(description | {"mvg": {"connected_classes": [1]}}))
    assert plan_dataset(root).spec.connected_classes == (1,)  # the organ; the vessel (2) is not declared

