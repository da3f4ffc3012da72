"""Dataset specs: one place that says what each dataset of the paper is and how to read it.

A spec names the region, modality, task, classes and intensity normalisation of a dataset and how
its files are laid out; a user points one at their own download (`mvg ingest DIR --spec acdc`).
The 13 datasets are those of Table 1 of the MVG paper; MSD Liver, Spleen and Lung are its
out-of-distribution and few-shot sets. The specs at the end describe public releases that
`storage.recipes` reads exactly as published (layout "release"). Datasets without a built-in spec
are described by the `mvg` block of their `dataset.json` or by a manifest (see `storage.layouts`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

TASKS = ("segmentation", "synthesis", "inpainting", "denoising", "detection")
# release: the public download exactly as published, read by the spec's recipe (storage.recipes)
LAYOUTS = ("nnunet", "msd", "manifest", "release")
NORMALISATIONS = ("ct", "percentile")

# What the label file of a case is, by task: the target to paint, the region to fill, or nothing.
LABEL_ROLE_BY_TASK = {
    "segmentation": "target",
    "detection": "target",
    "inpainting": "mask",
    "synthesis": "ignore",
    "denoising": "ignore",
}


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset is read and what its store holds.

    input_channel / target_channel: which channel of a multi-channel case is the input, and which is
    the target for image-to-image tasks (synthesis t1n -> t2w, low-dose -> full-dose, voided -> full).
    When target_channel is None the target comes from the label file.
    label_map: the label file's values -> the stored class values, for releases whose label maps use
    other values than the classes (MS-CMRSeg's 200/500/600, JSRT's 150/200/250); a value neither
    0 nor in the map fails the case. Empty: the file's values are the classes.
    connected_classes: the classes that are one connected structure in every case (a ventricle, a
    lung, the heart), so that a painting may keep only each one's largest connected component
    (`mvg.postprocessing`, nnU-Net's post-processing). Anatomy the recipe states (the real-data
    tests check it on the releases' labels): leave out a class with several parts in one case (the
    lungs as one class, lesions), and thin tubes, whose painting can come in pieces.
    """

    name: str
    title: str
    region: str
    modality: str  # CT, MRI, US, X-ray
    task: str
    layout: str
    classes: dict[int, str] = field(default_factory=dict)  # 0 is background, not listed
    normalisation: str = "percentile"
    input_channel: int = 0
    target_channel: int | None = None
    rescale: tuple[float, float] | None = None  # (slope, intercept) to scanner units, e.g. attenuation -> HU
    test_fraction: float = 0.2  # used when the layout has no split of its own
    paper_cases: tuple[int, int] | None = None  # (#training, #testing) in the paper's Table 1
    citation: str = ""
    expected: str = ""  # what a download must look like, in a sentence
    label_map: dict[int, int] = field(default_factory=dict)  # label file value -> class value
    connected_classes: tuple[int, ...] = ()

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"spec {self.name}: task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"spec {self.name}: layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"spec {self.name}: normalisation {self.normalisation!r} is not one of {NORMALISATIONS}")
        if self.task in ("synthesis", "denoising", "inpainting") and self.target_channel is None:
            raise ValueError(f"spec {self.name}: a {self.task} dataset needs a target_channel")
        undeclared = sorted(set(self.label_map.values()) - set(self.classes) - {0})
        if undeclared:
            raise ValueError(f"spec {self.name}: label_map gives class(es) {undeclared} that are not among its classes")
        # a tuple whatever the source gave (a manifest's or a store's JSON list), so specs compare equal
        object.__setattr__(self, "connected_classes", tuple(self.connected_classes))
        unknown = sorted(set(self.connected_classes) - set(self.classes))
        if unknown:
            raise ValueError(f"spec {self.name}: connected_classes {unknown} are not among its classes")

    @property
    def label_role(self) -> str:
        return LABEL_ROLE_BY_TASK[self.task]

    def with_overrides(self, **changes) -> DatasetSpec:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["classes"] = {str(k): v for k, v in self.classes.items()}
        data["label_map"] = {str(k): v for k, v in self.label_map.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DatasetSpec:
        data = dict(data)
        data["classes"] = {int(k): v for k, v in data.get("classes", {}).items()}
        data["label_map"] = {int(k): int(v) for k, v in data.get("label_map", {}).items()}
        for key in ("paper_cases", "rescale"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


AMOS_CLASSES = {
    1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 5: "esophagus", 6: "liver",
    7: "stomach", 8: "aorta", 9: "inferior vena cava", 10: "pancreas", 11: "right adrenal gland",
    12: "left adrenal gland", 13: "duodenum", 14: "bladder", 15: "prostate/uterus",
}
WORD_CLASSES = {
    1: "liver", 2: "spleen", 3: "left kidney", 4: "right kidney", 5: "stomach", 6: "gallbladder",
    7: "esophagus", 8: "pancreas", 9: "duodenum", 10: "colon", 11: "intestine", 12: "adrenal",
    13: "rectum", 14: "bladder", 15: "left head of femur", 16: "right head of femur",
}
BTCV_CLASSES = {
    1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 5: "esophagus", 6: "liver",
    7: "stomach", 8: "aorta", 9: "inferior vena cava", 10: "portal and splenic vein", 11: "pancreas",
    12: "right adrenal gland", 13: "left adrenal gland",
}

# The organs of SAM-Med2D's demo slices (AMOS and TotalSegmentator masks), in name order; a mask
# file's organ token with spaces for underscores.
CT_SLICE_CLASSES = {
    value: name
    for value, name in enumerate(
        (
            "aorta", "autochthon left", "autochthon right", "colon", "femur right", "gluteus maximus left",
            "gluteus maximus right", "heart atrium left", "heart atrium right", "heart myocardium",
            "heart ventricle left", "heart ventricle right", "hip left", "hip right", "inferior vena cava", "liver",
            "lung lower lobe left", "lung lower lobe right", "lung middle lobe right", "lung upper lobe left",
            "rib left 9", "rib right 9", "spleen", "vertebrae T9",
        ),
        start=1,
    )
}

BUILTIN_SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "amos-ct", "AMOS CT", "Abdomen", "CT", "segmentation", "nnunet", AMOS_CLASSES, "ct",
            paper_cases=(240, 120), citation="Ji et al., 2022",
            expected="nnU-Net v2 raw folder (Dataset218_AMOS2022_task1 style): dataset.json, imagesTr/, labelsTr/",
        ),
        DatasetSpec(
            "word", "WORD", "Abdomen", "CT", "segmentation", "nnunet", WORD_CLASSES, "ct",
            paper_cases=(100, 20), citation="Luo et al., 2021",
            expected="nnU-Net v2 raw folder converted from WORD: imagesTr/, labelsTr/",
        ),
        DatasetSpec(
            "btcv", "BTCV", "Abdomen", "CT", "segmentation", "nnunet", BTCV_CLASSES, "ct",
            paper_cases=(21, 9), citation="Iglesias & Sabuncu, 2015",
            expected="nnU-Net v2 raw folder (Synapse multi-organ): imagesTr/, labelsTr/",
        ),
        DatasetSpec(
            "amos-mri", "AMOS MRI", "Abdomen", "MRI", "segmentation", "nnunet", AMOS_CLASSES, "percentile",
            paper_cases=(60, 50), citation="Ji et al., 2022",
            expected="nnU-Net v2 raw folder with the AMOS MRI cases (ids >= 500)",
        ),
        DatasetSpec(
            "microsegnet", "MicroSegNet", "Pelvis", "US", "segmentation", "nnunet", {1: "prostate"}, "percentile",
            paper_cases=(55, 20), citation="Jiang et al., 2024",
            expected="nnU-Net v2 raw folder of micro-ultrasound volumes with prostate masks",
        ),
        DatasetSpec(
            "promise12", "PROMISE12", "Pelvis", "MRI", "segmentation", "nnunet", {1: "prostate"}, "percentile",
            paper_cases=(50, 30), citation="Litjens et al., 2014",
            expected="nnU-Net v2 raw folder converted from the PROMISE12 MHD files (or a manifest of .mhd pairs)",
        ),
        DatasetSpec(
            "brats-gli", "BraTS-GLI synthesis", "Brain", "MRI", "synthesis", "nnunet", {}, "percentile",
            input_channel=0, target_channel=2, paper_cases=(1251, 219), citation="Kazerooni et al., 2023",
            expected="nnU-Net v2 raw folder with channels t1n, t1c, t2w, t2f (_0000.._0003); t1n -> t2w by default",
        ),
        DatasetSpec(
            "brats-local", "BraTS-Local inpainting", "Brain", "MRI", "inpainting", "release", {}, "percentile",
            input_channel=0, target_channel=1, paper_cases=(1000, 251), citation="Kazerooni et al., 2023",
            expected="the BraTS-Local release: <case>-t1n-voided.nii.gz, <case>-mask.nii.gz and <case>-t1n.nii.gz, "
            "in one folder per case or all in one; or an nnU-Net v2 raw folder: _0000 voided t1n, _0001 full t1n, "
            "labelsTr the inpainting mask",
        ),
        DatasetSpec(
            "ldct", "Low-dose CT (Mayo)", "Chest", "CT", "denoising", "release", {}, "ct",
            input_channel=0, target_channel=1, paper_cases=(200, 59), citation="McCollough et al., 2021",
            # the AAPM challenge .mat files hold linear attenuation: HU = (mu - 0.0192) / 0.0192 * 1000
            rescale=(1000 / 0.0192, -1000.0),
            expected="a folder of AAPM challenge .mat slices (eunh/low_dose_CT) with variables quarter_dose and "
            "routine_dose in linear attenuation; or manifest rows: image = quarter-dose file, target = routine-dose file",
        ),
        DatasetSpec(
            "chest-defect", "Chest X-ray defect", "Chest", "X-ray", "segmentation", "manifest", {1: "lungs"},
            "percentile", paper_cases=(15, 6), citation="Candemir & Antani, 2019",
            expected="manifest rows of PNG/JPG radiographs and their masks",
        ),
        DatasetSpec(
            "acdc", "ACDC", "Chest", "MRI", "segmentation", "release",
            {1: "right ventricle", 2: "myocardium", 3: "left ventricle"}, "percentile", connected_classes=(1, 2, 3),
            paper_cases=(100, 50), citation="Bernard et al., 2018",
            expected="the SSL4MIS ACDC release: slices/patientNNN_frameNN_slice_K.h5 (2-D training slices, stacked "
            "by K into one volume per patient and frame) and volumes/patientNNN_frameNN.h5, HDF5 keys image/label; "
            "or a manifest, or an nnU-Net raw folder",
        ),
        DatasetSpec(
            "la", "Left atrium (LA)", "Chest", "MRI", "segmentation", "manifest", {1: "left atrium"}, "percentile",
            paper_cases=(81, 20), citation="Chen et al., 2019",
            expected="manifest of HDF5 volumes (keys image/label, SSL4MIS release of the 2018 LA challenge; "
            "its volumes are (H, W, D): give the rows slice_axis 2)",
        ),
        DatasetSpec(
            "deeplesion", "DeepLesion", "Whole body", "CT", "detection", "manifest", {1: "lesion box"}, "ct",
            paper_cases=(25000, 7120), citation="Yan et al., 2018",
            expected="manifest rows of CT slices (PNG, HU + 32768) and box masks rendered as targets",
        ),
        DatasetSpec(
            "msd-liver", "MSD Task03 Liver", "Abdomen", "CT", "segmentation", "msd", {1: "liver", 2: "tumour"}, "ct",
            citation="Antonelli et al., 2022", expected="Task03_Liver folder: dataset.json, imagesTr/, labelsTr/",
        ),
        DatasetSpec(
            "msd-spleen", "MSD Task09 Spleen", "Abdomen", "CT", "segmentation", "msd", {1: "spleen"}, "ct",
            citation="Antonelli et al., 2022", expected="Task09_Spleen folder: dataset.json, imagesTr/, labelsTr/",
        ),
        DatasetSpec(
            "msd-lung", "MSD Task06 Lung", "Chest", "CT", "segmentation", "msd", {1: "lung cancer"}, "ct",
            citation="Antonelli et al., 2022", expected="Task06_Lung folder: dataset.json, imagesTr/, labelsTr/",
        ),
        # Public releases read as published by their recipes (storage.recipes): the real data the
        # tests and the real-data benchmark use; users download the same releases.
        DatasetSpec(
            "cmr-mscmrseg", "MS-CMRSeg bSSFP cine", "Chest", "MRI", "segmentation", "release",
            {1: "left ventricle myocardium", 2: "left ventricle blood pool", 3: "right ventricle blood pool"},
            "percentile", label_map={200: 1, 500: 2, 600: 3}, connected_classes=(1, 2, 3), citation="Zhuang, 2019",
            expected="MS-CMRSeg 2019 bSSFP as pre-processed by Ouyang et al. (Q-Net): image_N.nii.gz and "
            "label_N.nii.gz, label values 200 LV myocardium, 500 LV blood pool, 600 RV blood pool (stored as 1, 2, 3)",
        ),
        DatasetSpec(
            "jsrt", "JSRT lungs and heart", "Chest", "X-ray", "segmentation", "release",
            {1: "right lung", 2: "left lung", 3: "heart"}, "percentile", label_map={150: 1, 200: 2, 250: 3},
            connected_classes=(1, 2, 3), citation="Shiraishi et al., 2000",
            expected="images/JPC*.png with masks/ of the same names, mask values 150 right lung, 200 left lung, "
            "250 heart (stored as 1, 2, 3)",
        ),
        DatasetSpec(
            "cxr", "Chest X-ray lungs (JSRT / Montgomery)", "Chest", "X-ray", "segmentation", "release",
            {1: "lungs"}, "percentile", citation="Jaeger et al., 2014; Shiraishi et al., 2000",
            expected="N.jpg radiographs with N-mask.png lung masks {0, 255} (imlab-uiip lung-segmentation-2d)",
        ),
        DatasetSpec(
            "ct-slices", "CT slices with organ masks (SAM-Med2D demo)", "Whole body", "CT", "segmentation", "release",
            CT_SLICE_CLASSES, "percentile", citation="Cheng et al., 2023 (SAM-Med2D); Ji et al., 2022; Wasserthal et al., 2023",
            expected="SAM-Med2D data_demo: images/*.png (8-bit, already windowed), masks/<image>_<organ>_<NNN>.png "
            "{0, 255}, image2label_train.json (and label2image_test.json) naming each image's masks",
        ),
        DatasetSpec(
            "ldct-mayo", "Low-dose CT (Mayo 2016, DICOM)", "Abdomen", "CT", "denoising", "release", {}, "ct",
            input_channel=0, target_channel=1, citation="McCollough et al., 2017",
            expected="<patient>/quarter/*.IMA and <patient>/full/*.IMA DICOM slices, one file name for the two doses "
            "of a slice (2016 Mayo / AAPM low-dose CT challenge)",
        ),
        DatasetSpec(
            "brats2013", "BraTS 2013 FLAIR -> T1c", "Brain", "MRI", "synthesis", "release", {}, "percentile",
            input_channel=0, target_channel=1, citation="Menze et al., 2015",
            expected="DeepMedic's example data: {train,validation,test}/<case>/Flair_subtrMeanDivStd.nii.gz and "
            "T1c_subtrMeanDivStd.nii.gz",
        ),
        DatasetSpec(
            "brats-synthesis", "BraTS-GLI 2023 FLAIR -> T1c", "Brain", "MRI", "synthesis", "release", {}, "percentile",
            input_channel=3, target_channel=1, citation="Kazerooni et al., 2023",
            expected="BraTS 2023 cases as t1n, t1c, t2w, t2f NIfTI files: <case>-<contrast>.nii.gz (a folder per case "
            "or all in one) or bare <contrast>.nii.gz for one case; channels t1n, t1c, t2w, t2f: t2f (FLAIR) -> t1c",
        ),
        DatasetSpec(
            "brats-edema", "BraTS 2021 edema (FLAIR)", "Brain", "MRI", "segmentation", "release", {1: "edema"},
            "percentile", citation="Baid et al., 2021",
            expected="imagesTr/<case>.nii.gz (FLAIR) and labelsTr/<case>.nii.gz (0/1 edema), no dataset.json "
            "(SAM-Med3D's examples)",
        ),
        DatasetSpec(
            "sct", "Spinal cord (SCT test data)", "Spine", "MRI", "segmentation", "release",
            {1: "spinal cord", 2: "grey matter"}, "percentile", citation="De Leener et al., 2017",
            expected="sct_testing_data: t1/t1w.nii.gz + t1w_seg-manual, t2/t2.nii.gz + t2_seg-manual, t2s/t2s.nii.gz + "
            "t2s_seg and t2s_gmseg_manual, mt/mt1.nii.gz + mt1_seg and mt1_gmseg_goldstandard",
        ),
    )
}

def get_spec(name: str) -> DatasetSpec:
    try:
        return BUILTIN_SPECS[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_SPECS))
        raise KeyError(f"no built-in dataset spec named {name!r}; known specs: {known}") from None
