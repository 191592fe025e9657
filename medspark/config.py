"""Typed pipeline configuration, loaded from YAML.

The YAML mirrors the dataclasses below one to one. Loading is strict: an unknown key, a value
of the wrong type or out of range fails at once with :class:`medspark.errors.ConfigError`,
which names the dotted key, the value found and what is allowed. Nothing is silently ignored,
because a misspelt key that falls back to a default is the kind of mistake that only shows
weeks later in the tables.

``conf/pipeline.yaml`` holds the same defaults as the dataclasses (a test keeps them equal).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from medspark.errors import ConfigError
from medspark.validation import OUTPUT_SIZE, Allowed

DEFAULT_CONFIG_PATH = Path("conf") / "pipeline.yaml"

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MIB = 1024 * 1024


def _meta(**allowed: Any) -> dict[str, object]:
    """Field metadata: the values the key allows (its kind comes from the annotation)."""
    return {"allowed": Allowed(**allowed)}


@dataclass(frozen=True)
class SparkConfig:
    """How the SparkSession is built when medspark builds it (CLI, demo, tests)."""

    master: str = "local[2]"
    app_name: str = "medspark"
    # Small-data defaults: Spark's 200 shuffle partitions cost more in task start-up
    # than they save on a 2-core machine.
    shuffle_partitions: int = field(default=8, metadata=_meta(minimum=1))
    driver_memory: str = field(default="4g", metadata=_meta(pattern=r"^\d+[kmgtKMGT]?$"))
    arrow_max_records_per_batch: int = field(default=2048, metadata=_meta(minimum=1))
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    # Any other Spark property, passed through as given (e.g. spark.executor.memory).
    conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestConfig:
    """Reading scan archives (the ``dicom`` data source)."""

    # A partition reads at most about this many input bytes; large zips are split by member.
    max_partition_bytes: int = field(default=128 * _MIB, metadata=_meta(minimum=_MIB))
    # 0 means twice Spark's default parallelism, so every core has work.
    min_partitions: int = field(default=0, metadata=_meta(minimum=0))
    # One DICOM item larger than this (uncompressed) is refused as an error row.
    max_item_bytes: int = field(default=2048 * _MIB, metadata=_meta(minimum=1024))
    # Archives inside archives are opened down to this depth (1 = no nesting).
    max_archive_depth: int = field(default=2, metadata=_meta(minimum=1, maximum=8))
    # Decompression-bomb bounds, per top-level archive (nested archives count in it).
    max_archive_bytes: int = field(default=64 * 1024 * _MIB, metadata=_meta(minimum=_MIB))
    max_archive_members: int = field(default=1_000_000, metadata=_meta(minimum=1))
    max_compression_ratio: float = field(default=200.0, metadata=_meta(minimum=1.0))
    # Bombs inside DICOM: a Deflated Explicit VR Little Endian data set may inflate to at most
    # this many bytes, and one frame may hold at most this many pixel samples (rows x columns x
    # samples per pixel). Beyond them the item is an error row, never an executor out of
    # memory. The defaults pass every real file of pydicom's test data.
    max_inflated_bytes: int = field(default=512 * _MIB, metadata=_meta(minimum=_MIB))
    max_frame_samples: int = field(default=100_000_000, metadata=_meta(minimum=1024))
    # medspark run on a local master: an input of at most this many bytes is read, decoded and
    # predicted in the driver process (while the JVM starts) instead of on Spark's Python
    # workers, whose start costs more than such an input's work; 0 turns it off.
    driver_pass_max_bytes: int = field(default=64 * _MIB, metadata=_meta(minimum=0))
    # Streaming ingest (medspark ingest-stream): new files taken per micro-batch.
    stream_max_files_per_trigger: int = field(default=1000, metadata=_meta(minimum=1))


def _default_steps() -> list[dict[str, Any]]:
    return [{"op": "median_blur", "ksize": 3}, {"op": "clahe", "clip_limit": 2.0, "tile_grid": 8}]


def _default_mask() -> list[dict[str, Any]]:
    return [{"op": "otsu"}, {"op": "morphology", "operation": "open", "ksize": 3}]


@dataclass(frozen=True)
class PreprocessConfig:
    """Decoding to a display image and the OpenCV chain (see medspark.preprocess.chain).

    ``window``: ``auto`` (the file's VOI LUT or Window Center/Width, else min-max), ``minmax``,
    a preset (brain, lung, bone, abdomen, soft_tissue, mediastinum, liver) or ``[center, width]``.
    """

    window: str | list[float] = "auto"
    steps: list[dict[str, Any]] = field(default_factory=_default_steps)
    mask: list[dict[str, Any]] | None = field(default_factory=_default_mask)
    output_size: int = field(default=224, metadata={"allowed": OUTPUT_SIZE})
    thumbnail_size: int = field(default=128, metadata=_meta(minimum=16, maximum=1024))
    # Frames per output Arrow batch: bounds executor memory for large tensors.
    frames_per_batch: int = field(default=64, metadata=_meta(minimum=1))
    # A multi-frame file with more frames is split into shares of this many, one task each.
    frames_per_task: int = field(default=128, metadata=_meta(minimum=1))
    # 0 means twice Spark's default parallelism.
    partitions: int = field(default=0, metadata=_meta(minimum=0))

    def __post_init__(self) -> None:
        from medspark.dicom.pixels import WINDOW_PRESETS
        from medspark.preprocess.chain import build_chain

        if isinstance(self.window, str):
            allowed = ["auto", "minmax", *WINDOW_PRESETS]
            if self.window not in allowed:
                raise ConfigError("preprocess.window", self.window, allowed + ["[center, width]"])
        elif len(self.window) != 2 or not self.window[1] > 0:
            raise ConfigError("preprocess.window", self.window, "[center, width] with width > 0")
        build_chain(self.steps, self.mask, self.output_size)  # raises ConfigError naming the key

    def chain(self) -> Any:
        """The validated :class:`~medspark.preprocess.chain.Chain`."""
        from medspark.preprocess.chain import build_chain

        return build_chain(self.steps, self.mask, self.output_size)

    def window_value(self) -> str | tuple[float, float]:
        """``window`` in the form :func:`medspark.dicom.pixels.to_display` takes."""
        return self.window if isinstance(self.window, str) else (self.window[0], self.window[1])


@dataclass(frozen=True)
class ModelConfig:
    """One model that ``medspark infer`` can run (see medspark.inference).

    ``path`` None means the demonstration model bundled with medspark. ``format``:
    ``torchscript`` (torch.jit.save), ``export`` (torch.export.save, a .pt2 program) or
    ``state_dict`` (weights for the named ``architecture``). Inputs are the ``images`` tensors:
    uint8, ``input_size`` [rows, cols] with ``channels`` 1 or 3, scaled as (x - mean) / std.
    """

    name: str = field(default="medspark-nodule-demo", metadata=_meta(pattern=r"^[\w.-]+$"))
    version: str = field(default="1", metadata=_meta(pattern=r"^[\w.-]+$"))
    path: str | None = None
    format: Literal["torchscript", "export", "state_dict"] = "torchscript"
    architecture: str | None = None
    input_size: list[int] = field(default_factory=lambda: [224, 224])
    channels: int = field(default=1, metadata=_meta(minimum=1, maximum=3))
    class_names: list[str] = field(default_factory=lambda: ["no_nodule", "nodule"])
    mean: float = 0.0
    std: float = field(default=255.0, metadata=_meta(minimum=1e-6))

    def __post_init__(self) -> None:
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ConfigError(
                f"inference.models[{self.name}].input_size", self.input_size, "[rows, cols]"
            )
        if self.channels not in (1, 3):
            raise ConfigError(f"inference.models[{self.name}].channels", self.channels, ["1", "3"])
        if len(self.class_names) < 2:
            raise ConfigError(
                f"inference.models[{self.name}].class_names", self.class_names, "two or more names"
            )
        if self.format == "state_dict" and not self.architecture:
            raise ConfigError(
                f"inference.models[{self.name}].architecture",
                None,
                "an architecture for state_dict files",
            )


@dataclass(frozen=True)
class InferenceConfig:
    """Batched inference with predict_batch_udf."""

    model: str = "medspark-nodule-demo"  # which entry of ``models`` ``medspark infer`` runs
    models: list[ModelConfig] = field(default_factory=lambda: [ModelConfig()])
    batch_size: int = field(default=64, metadata=_meta(minimum=1))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast on GPUs that support it, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Torch threads per Python worker (0 = torch's default); on CPU, cores / tasks per core.
    torch_threads: int = field(default=0, metadata=_meta(minimum=0))
    # A saliency map per prediction into the saliency table (medspark.inference.saliency,
    # docs/inference.md).
    saliency: bool = False
    # auto: Grad-CAM when the model has features/head methods, else occlusion sensitivity;
    # gradcam (a backward pass; needs the two methods); occlusion (any model; one forward
    # pass per patch position: ceil(rows / stride) x ceil(cols / stride) per frame).
    saliency_method: Literal["auto", "gradcam", "occlusion"] = "auto"
    # Occlusion: side of the square hidden (tensor pixels), and the step between positions.
    occlusion_patch: int = field(default=16, metadata=_meta(minimum=1, maximum=4096))
    occlusion_stride: int = field(default=16, metadata=_meta(minimum=1, maximum=4096))

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if self.model not in names:
            raise ConfigError("inference.model", self.model, names)
        if self.occlusion_stride > self.occlusion_patch:
            raise ConfigError(
                "inference.occlusion_stride",
                self.occlusion_stride,
                f"an integer from 1 to occlusion_patch ({self.occlusion_patch}): a larger "
                "step would leave pixels that no patch hides",
            )
        smallest = min(min(m.input_size) for m in self.models)
        if self.occlusion_patch > smallest:
            raise ConfigError(
                "inference.occlusion_patch",
                self.occlusion_patch,
                f"an integer from 1 to {smallest} (the smallest model input side)",
            )

    def model_config(self, name: str | None = None) -> ModelConfig:
        """The entry of ``models`` called ``name`` (default: ``model``)."""
        name = name or self.model
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError("--model", name, [m.name for m in self.models])


@dataclass(frozen=True)
class DeidConfig:
    """De-identification of analyst tables (DICOM PS3.15 Annex E; see medspark.dicom.deid).

    The secret that keys pseudonyms and date shifts comes from the environment variable named
    by ``secret_env``, else from ``secret_file``, else from a file generated once in the user's
    config directory (``~/.config/medspark/deid_secret``, mode 0600). Never from the tables.
    """

    enabled: bool = True
    secret_env: str = "MEDSPARK_DEID_SECRET"
    secret_file: str | None = None
    # Option "Retain Longitudinal Temporal Information with Modified Dates": shift every date by
    # a per-patient offset derived from the secret, so intervals within a patient stay true.
    # False removes dates instead (as the Basic Profile does).
    shift_dates: bool = True
    max_date_shift_days: int = field(default=365, metadata=_meta(minimum=1, maximum=3650))
    # Option "Retain Patient Characteristics": age, sex, size, weight.
    retain_patient_characteristics: bool = False
    # Keep Station Name, Manufacturer, Model (utilisation is built on them); serials go always.
    keep_device_identity: bool = True
    # Private attributes kept, as "(gggg,eeee)" tags with the private creator element block.
    safe_private_tags: list[str] = field(default_factory=list)
    # Write restricted_phi_map (original -> pseudonymous ids); for data engineers only.
    phi_map: bool = False
    # Frames that may show burned-in text (Burned In Annotation (0028,0301) YES, ultrasound,
    # secondary capture): "clean" blacks out what lies outside the Sequence of Ultrasound
    # Regions (0018,6011) and withholds the pixels of frames that declare no region (they go
    # to restricted_images only); "keep" writes them to images as they are.
    burned_in: Literal["clean", "keep"] = "clean"
    # Export folders and files are often named after the patient (DOE^JOHN_12345/IM0001):
    # false (the default) puts a location key in the analyst tables' source_uri and
    # archive_member (and in their messages), the paths in restricted_locations; true keeps
    # the paths in the analyst tables.
    keep_paths: bool = False


@dataclass(frozen=True)
class MetricsConfig:
    """Utilisation statistics."""

    # A study's acquisition span counts at most this long towards a day's busy hours.
    study_span_cap_hours: float = field(default=4.0, metadata=_meta(minimum=0.0, maximum=24.0))


#: Columns ``evaluation.subgroups`` may name: ``scans`` columns that say what kind of scanner
#: or study a frame comes from (never an identifier, nor a free-text place such as the
#: institution), and ``patient_sex`` and ``patient_age_band`` read from the header where the
#: de-identification keeps them (``deid.retain_patient_characteristics``).
SUBGROUP_COLUMNS = (
    "modality",
    "manufacturer",
    "manufacturer_model_name",
    "station_name",
    "body_part_examined",
    "photometric_interpretation",
    "transfer_syntax_uid",
    "sop_class_uid",
    "patient_sex",
    "patient_age_band",
)


@dataclass(frozen=True)
class EvaluationConfig:
    """``medspark evaluate``: operating point, intervals, calibration, subgroups, levels.

    The positive class is the class whose probability is the score (``null``: the last of the
    model's ``class_names``, ``nodule`` for the demonstration model); every other class is
    negative. A unit is called positive when its score is at least the threshold.
    """

    positive_class: str | None = None
    # fixed: ``threshold``; sensitivity: the highest threshold reaching ``target_sensitivity``;
    # youden: the one maximising sensitivity + specificity - 1 (chosen per level, on all units).
    threshold_rule: Literal["fixed", "sensitivity", "youden"] = "fixed"
    threshold: float = field(default=0.5, metadata=_meta(minimum=0.0, maximum=1.0))
    target_sensitivity: float = field(default=0.9, metadata=_meta(minimum=0.0, maximum=1.0))
    # An instance's and a patient's score from its frames' scores; positive when any frame is.
    aggregation: Literal["max", "mean"] = "max"
    # Patient-level bootstrap: resamples (0: no intervals), seed, confidence level.
    bootstrap_resamples: int = field(default=1000, metadata=_meta(minimum=0, maximum=100_000))
    seed: int = field(default=20261204, metadata=_meta(minimum=0))
    confidence: float = field(default=0.95, metadata=_meta(minimum=0.5, maximum=0.999))
    # Fewer patients than this in a subgroup: the figure without an interval, and a note.
    min_patients: int = field(default=10, metadata=_meta(minimum=2))
    calibration_bins: int = field(default=10, metadata=_meta(minimum=2, maximum=100))
    subgroups: list[str] = field(
        default_factory=lambda: [
            "manufacturer",
            "manufacturer_model_name",
            "modality",
            "patient_sex",
            "patient_age_band",
        ]
    )
    # Lower edges (years) of the age bands after the first: [18, 40, 65] gives <18, 18-39, ...
    age_bands: list[int] = field(default_factory=lambda: [18, 40, 65])
    # The joined (score, label, patient, subgroups) rows are evaluated on the driver, collected
    # through Arrow (about 100 bytes a frame); more labelled frames than this fail with a message.
    max_driver_frames: int = field(default=5_000_000, metadata=_meta(minimum=1))

    def __post_init__(self) -> None:
        for i, column in enumerate(self.subgroups):
            if column not in SUBGROUP_COLUMNS:
                raise ConfigError(f"evaluation.subgroups[{i}]", column, list(SUBGROUP_COLUMNS))
            if column in self.subgroups[:i]:  # its rows would repeat model_evaluation's key
                raise ConfigError(f"evaluation.subgroups[{i}]", column, "each column once")
        if self.age_bands != sorted(set(self.age_bands)) or any(a <= 0 for a in self.age_bands):
            raise ConfigError(
                "evaluation.age_bands", self.age_bands, "increasing positive ages in years"
            )

    def positive_class_of(self, class_names: list[str], model: str) -> str:
        """The positive class for a model with ``class_names``; a ConfigError if not one."""
        if self.positive_class is None:
            return class_names[-1]
        if self.positive_class not in class_names:
            raise ConfigError(
                "evaluation.positive_class",
                self.positive_class,
                f"one of model {model}'s classes {class_names}",
            )
        return self.positive_class


@dataclass(frozen=True)
class VolumeModelConfig:
    """A 3D segmentation model for ``medspark volumes`` (see medspark.volumes.segment).

    ``path``: a TorchScript file (input (batch, 1, D, H, W) float32, output (batch,
    len(labels) + 1, D, H, W) class scores with background first, or one foreground logit for
    a single label), or a MONAI bundle directory (``models/model.ts`` and
    ``configs/metadata.json`` or ``configs/inference.json``, whose labels and ``roi_size`` are
    used where the keys here are empty), or null: the bundled demonstration model (synthetic
    chest CT: lung, nodule; ``medspark/volumes/default_model``). ``roi_size`` null: the
    bundle's, else [64, 64, 64].
    """

    path: str | None = None
    labels: list[str] = field(default_factory=list)
    name: str = field(default="volume-model", metadata=_meta(pattern=r"^[\w.-]+$"))
    version: str = field(default="1", metadata=_meta(pattern=r"^[\w.-]+$"))
    roi_size: list[int] | None = None
    sw_batch_size: int = field(default=1, metadata=_meta(minimum=1))
    overlap: float = field(default=0.25, metadata=_meta(minimum=0.0, maximum=0.95))
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        # The labels of a bundle or of the bundled model are read on the driver when they are
        # not given (medspark.volumes.segment.resolve_volume_model), which checks them too.
        if self.roi_size is not None and (len(self.roi_size) != 3 or min(self.roi_size) < 1):
            raise ConfigError("volumes.model.roi_size", self.roi_size, "[slices, rows, columns]")


@dataclass(frozen=True)
class VolumesConfig:
    """Series as volumes (see medspark.volumes and docs/volumes.md).

    The 3D chain, each step null to skip it: ``orientation`` (three letters, the patient side
    each array axis runs toward, e.g. SPL), ``target_spacing`` [slice, row, column] mm
    (trilinear), ``intensity_range`` [low, high] modality values scaled to [0, 1] and clipped,
    ``spatial_size`` [slices, rows, columns] centre crop or pad.
    """

    # ingest and run rebuild the series table rows of the series they touched.
    series: bool = True
    # Series of these modalities are assembled and segmented by medspark volumes.
    modalities: list[str] = field(default_factory=lambda: ["CT", "MR", "PT"])
    # One series is assembled in one task; a series of more voxels (slices x rows x columns)
    # is an error row with its size instead of an executor out of memory. 2**27 voxels are
    # 512 MiB as float32.
    max_voxels: int = field(default=2**27, metadata=_meta(minimum=1))
    orientation: str | None = "SPL"
    target_spacing: list[float] | None = None
    intensity_range: list[float] | None = None
    spatial_size: list[int] | None = None
    # A series with missing slices (verdict missing_slices): flag leaves it out of the
    # volumes; interpolate fills runs of at most max_interpolated consecutive missing slices
    # by linear interpolation along the slice normal (longer gaps stay flagged).
    missing_slices: Literal["flag", "interpolate"] = "flag"
    max_interpolated: int = field(default=2, metadata=_meta(minimum=1, maximum=64))
    model: VolumeModelConfig | None = None
    # With a model: each segmented series also becomes a DICOM Segmentation file (highdicom)
    # under <warehouse>/segmentations, its path in series_segments.seg_path.
    seg: bool = True
    # medspark run also runs volumes (series of this run's scans, with volumes.model) after
    # its one pass; false: only medspark volumes does.
    in_run: bool = False

    def fill_limit(self) -> int:
        """The longest gap filled: ``max_interpolated`` with ``interpolate``, else 0."""
        return self.max_interpolated if self.missing_slices == "interpolate" else 0

    def __post_init__(self) -> None:
        if self.orientation is not None:
            from medspark.volumes.transforms import check_orientation

            try:
                check_orientation(self.orientation)
            except ValueError:
                raise ConfigError(
                    "volumes.orientation", self.orientation, "three letters, e.g. SPL, or null"
                ) from None
        if self.target_spacing is not None and (
            len(self.target_spacing) != 3 or min(self.target_spacing) <= 0
        ):
            raise ConfigError(
                "volumes.target_spacing", self.target_spacing, "[slice, row, column] mm > 0"
            )
        if self.intensity_range is not None and (
            len(self.intensity_range) != 2 or not self.intensity_range[0] < self.intensity_range[1]
        ):
            raise ConfigError("volumes.intensity_range", self.intensity_range, "[low, high]")
        if self.spatial_size is not None and (
            len(self.spatial_size) != 3 or min(self.spatial_size) < 1
        ):
            raise ConfigError("volumes.spatial_size", self.spatial_size, "[slices, rows, columns]")
        if self.in_run and self.model is None:
            raise ConfigError(
                "volumes.in_run", self.in_run, "false, or true with a volumes.model to run"
            )


def _tables_config() -> type:
    """``TablesConfig``: one key per table of the registry
    (:data:`medspark.tables.schemas.TABLES`), its default name the key itself; a restricted
    table's name must start with ``restricted_``."""
    from medspark.tables.schemas import TABLES

    restricted = r"^restricted_[A-Za-z0-9_]*$"
    return dataclasses.make_dataclass(
        "TablesConfig",
        [
            (
                name,
                str,
                field(
                    default=name,
                    metadata=_meta(pattern=restricted if t.restricted else _TABLE_NAME.pattern),
                ),
            )
            for name, t in TABLES.items()
        ],
        frozen=True,
        namespace={
            "__doc__": "Delta table names under the warehouse directory.",
            "__module__": __name__,
        },
    )


#: Delta table names under the warehouse directory, one key per registered table.
TablesConfig: Any = _tables_config()


@dataclass(frozen=True)
class PipelineConfig:
    """The whole configuration; ``warehouse`` may also come from ``--warehouse``.

    ``restricted_warehouse`` is the root of the ``restricted_*`` tables (true acquisition times,
    the re-identification map, withheld pixels): apart from the analyst warehouse, so that
    giving analysts the warehouse does not give them the key to every pseudonym. Default: the
    warehouse's sibling ``<warehouse>_restricted``, created owner-only (0700).
    """

    warehouse: str | None = None
    restricted_warehouse: str | None = None
    spark: SparkConfig = field(default_factory=SparkConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    deid: DeidConfig = field(default_factory=DeidConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    volumes: VolumesConfig = field(default_factory=VolumesConfig)
    tables: TablesConfig = field(default_factory=TablesConfig)

    def table_path(self, name: str) -> str:
        """Path of the Delta table configured under ``tables.<name>``.

        ``restricted_*`` tables live under :meth:`restricted_root`, the others under the
        warehouse.
        """
        root = self.restricted_root() if name.startswith("restricted_") else self._warehouse()
        return str(root / getattr(self.tables, name))

    def _warehouse(self) -> Path:
        if self.warehouse is None:
            raise ConfigError("warehouse", None, "a directory path (set it or pass --warehouse)")
        return Path(self.warehouse)

    def restricted_root(self) -> Path:
        """Root of the ``restricted_*`` tables: ``restricted_warehouse``, else a sibling."""
        if self.restricted_warehouse:
            return Path(self.restricted_warehouse)
        warehouse = self._warehouse()
        return warehouse.with_name(warehouse.name + "_restricted")


def _type_name(tp: object) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of: " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is dict:
        return "a mapping of strings"
    if tp is type(None):
        return "null"
    if tp in (int, float, str, bool):
        return Allowed(tp).describe()
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: object, tp: Any, meta: Mapping[str, object]) -> object:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg, meta)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(key, value, _type_name(tp))
    if origin is Literal:
        return Allowed(choices=get_args(tp)).check(key, value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, value, "a mapping")
        if get_args(tp)[1] is Any:  # free-form mapping, validated by its owner
            return {str(k): v for k, v in value.items()}
        return {str(k): str(v) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, value, "a list")
        (arg,) = get_args(tp)
        return [_coerce(f"{key}[{i}]", v, arg, {}) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp in (int, float, str, bool):
        allowed = typing.cast(Allowed, meta.get("allowed") or Allowed())
        return dataclasses.replace(allowed, kind=tp).check(key, value)
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug in this module


def _build(cls: Any, data: object, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(prefix or "<top level>", data, "a mapping of keys")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(key, data[unknown[0]], f"known keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(key, value, hints[name], fields[name].metadata)
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, object] | None) -> PipelineConfig:
    """Build and validate a :class:`PipelineConfig` from plain data (parsed YAML)."""
    return _build(PipelineConfig, data or {}, "")


def load_config(path: str | Path | None = None) -> PipelineConfig:
    """Load the pipeline config.

    ``path`` None means ``conf/pipeline.yaml`` when it exists in the working directory, else the
    built-in defaults (which are the same values).
    """
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return PipelineConfig()
        path = DEFAULT_CONFIG_PATH
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--conf", str(path), "an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError("--conf", str(path), f"valid YAML ({exc})") from None
    return config_from_dict(data)


def with_overrides(config: PipelineConfig, **changes: object) -> PipelineConfig:
    """Return a copy of ``config`` with top-level fields replaced (None values are ignored)."""
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})


def to_dict(config: PipelineConfig) -> dict[str, object]:
    """The config as plain data, suitable for YAML/JSON and for hashing."""
    return dataclasses.asdict(config)
