"""``medspark demo``: a sample archive from pydicom's bundled real files, run through the flow.

pydicom ships real DICOM files (CT, MR, US, NM, RT, SR, ECG waveform; many transfer syntaxes)
and deliberately broken ones. The demo lays them out the way hospital exports arrive: some loose
(with and without ``.dcm``), some in a zip, some in a tar.gz, plus a text file and an empty
file, then ingests everything and prints what landed where.

The files are read from pydicom's package folder directly: ``get_testdata_file`` may try the
network for files that are not bundled.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from pyspark.sql import functions as F

from medspark.config import PipelineConfig


def pydicom_test_files() -> Path:
    """The folder of real DICOM files bundled with pydicom."""
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


def build_sample_input(target: Path) -> list[Path]:
    """Write the sample inputs under ``target`` (replacing it) and return the paths to ingest."""
    src = pydicom_test_files()
    dicoms = sorted(p for p in src.glob("*.dcm") if p.is_file())
    if target.exists():
        shutil.rmtree(target)
    loose = target / "loose"
    loose.mkdir(parents=True)
    # Split deterministically: every third file loose, the rest between a zip and a tar.gz.
    loose_files = dicoms[0::3]
    zip_files = dicoms[1::3]
    tar_files = dicoms[2::3]
    for i, path in enumerate(loose_files):
        name = path.stem if i % 2 else path.name  # half of them without an extension
        shutil.copyfile(path, loose / name)
    shutil.copyfile(src / "README.txt", loose / "notes.txt")  # not DICOM
    (loose / "empty.dcm").write_bytes(b"")
    zip_path = target / "series_export.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in zip_files:
            zf.write(path, f"export/{path.name}")
    tar_path = target / "pacs_export.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        for path in tar_files:
            tf.add(path, arcname=f"study/{path.name}")
    return [loose, zip_path, tar_path]


STATIONS = (
    ("CT01", "medspark synthetic", "SYN-CT 64"),
    ("CT02", "medspark synthetic", "SYN-CT 128"),
)


def build_screening_export(
    target: Path, n_patients: int = 20, slices: int = 4
) -> tuple[Path, Path]:
    """A zip of synthetic chest-CT studies (two stations, several days) and its labels CSV.

    Each patient has one study of ``slices`` slices. Every fourth patient has no nodule; in
    the others about half the slices show one (so a patient-level evaluation has negative
    patients too, and 20 patients, 10 per station, are enough for intervals). The
    labels CSV (``sop_instance_uid,frame,label``) uses the original SOP Instance UIDs, as a
    hospital's annotation export would; ``medspark evaluate`` maps them to pseudonyms.
    """
    import datetime as dt

    from pydicom.uid import generate_uid

    from medspark.synthetic import SliceSpec, ct_slice_bytes

    target.mkdir(parents=True, exist_ok=True)
    zip_path = target / "ct_screening_export.zip"
    labels_path = target / "ct_screening_labels.csv"
    lines = ["sop_instance_uid,frame,label"]
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in range(n_patients):
            station, manufacturer, model = STATIONS[p % len(STATIONS)]
            day = dt.datetime(2026, 3, 2, 8, 0) + dt.timedelta(days=p // 3, hours=2 * (p % 3))
            study = generate_uid(entropy_srcs=["demo-study", str(p)])
            series = generate_uid(entropy_srcs=["demo-series", str(p)])
            for i in range(slices):
                seed = 1_000_000 + p * 100 + i
                spec = SliceSpec(nodule=bool(p % 4 and (p + i) % 2), seed=seed)
                sop = generate_uid(entropy_srcs=["demo-sop", str(seed)])
                data = ct_slice_bytes(
                    spec,
                    sop_uid=sop,
                    study_uid=study,
                    series_uid=series,
                    patient_id=f"DEMO{p:04d}",
                    patient_name=f"Demo^Patient{p}",
                    station=station,
                    manufacturer=manufacturer,
                    model=model,
                    acquired=day + dt.timedelta(minutes=3 * i),
                    instance_number=i + 1,
                )
                zf.writestr(f"patient{p:02d}/slice{i:02d}.dcm", data)
                lines.append(f"{sop},0,{'nodule' if spec.nodule else 'no_nodule'}")
    labels_path.write_text("\n".join(lines) + "\n")
    return zip_path, labels_path


#: The demo's synthetic chest series: slices, rows, columns and spacing (mm) of the scanner grid.
CHEST_SHAPE = (32, 64, 64)
CHEST_SPACING = (3.0, 2.5, 2.5)


def build_chest_series(target: Path) -> Any:
    """A small synthetic chest CT series (32 slices of 64 x 64, 3 mm apart, 2.5 mm pixels:
    lungs, vessels and a nodule of known radius, :mod:`medspark.volumes.synthetic`) as one CT
    file per slice under ``target``; returns its :class:`~medspark.volumes.synthetic.Chest`,
    the truth the bundled 3D model's figures can be compared with."""
    from pydicom.uid import generate_uid

    from medspark.volumes.synthetic import chest_hu, random_chest, write_series

    extent = tuple(n * s for n, s in zip(CHEST_SHAPE, CHEST_SPACING, strict=True))
    seed = 11
    chest = random_chest(seed, extent, max_nodules=1, nodule_radius_mm=(6.0, 9.0))
    while not chest.nodules:  # deterministic: the first seed from 11 with a nodule
        seed += 1
        chest = random_chest(seed, extent, max_nodules=1, nodule_radius_mm=(6.0, 9.0))
    write_series(
        target,
        chest_hu(chest, CHEST_SHAPE, CHEST_SPACING, seed=seed),
        CHEST_SPACING,
        series_uid=generate_uid(entropy_srcs=["demo-chest-series"]),
        study_uid=generate_uid(entropy_srcs=["demo-chest-study"]),
        origin=(-80.0, -80.0, -48.0),
        patient_id="DEMO-CHEST-1",
    )
    return chest


def demo_volumes_config(config: PipelineConfig) -> PipelineConfig:
    """``config`` with the bundled demonstration 3D model and its preprocessing, unless
    ``volumes.model`` is configured already."""
    import dataclasses

    from medspark.config import VolumeModelConfig
    from medspark.volumes.train import DEMO_MODEL

    if config.volumes.model is not None:
        return config
    volumes = dataclasses.replace(
        config.volumes,
        model=VolumeModelConfig(),  # path null: the bundled model
        orientation=DEMO_MODEL["orientation"],
        target_spacing=list(DEMO_MODEL["target_spacing"]),
        intensity_range=list(DEMO_MODEL["intensity_range"]),
    )
    return dataclasses.replace(config, volumes=volumes)


#: Heart rates (bpm) of the demo's synthetic ECGs: a spread for the notebook's distribution.
ECG_RATES = (48, 57, 63, 68, 72, 76, 81, 88, 96, 112)


def build_ecg_export(target: Path, rates: tuple[int, ...] = ECG_RATES) -> Path:
    """A folder of synthetic 12-lead ECGs (10 s, 500 Hz) at known heart rates, from two carts.

    pydicom's one real ECG (``waveform_ecg.dcm``, in the sample input) gives a 12-lead plot but
    no distribution; these give ``ecg_metrics`` a spread of heart rates to plot.
    """
    from pydicom.uid import generate_uid

    from medspark.waveforms.synthetic import write_ecg

    folder = target / "ecg_export"
    folder.mkdir(parents=True, exist_ok=True)
    for i, rate in enumerate(rates):
        write_ecg(
            folder / f"ecg{i:02d}.dcm",
            rate,
            seed=i,
            sop_instance_uid=generate_uid(entropy_srcs=["demo-ecg", str(i)]),
            patient_id=f"DEMO-ECG{i:03d}",
            station_name=f"ECG-CART-{1 + i % 2}",
            acquisition=f"202603{2 + i // 4:02d}{9 + i % 4:02d}1500",
        )
    return folder


def _show(spark: Any, config: PipelineConfig, table: str) -> Any:
    return spark.read.format("delta").load(config.table_path(table))


def run_demo(spark: Any, config: PipelineConfig, workdir: Path, saliency: bool = True) -> None:
    """Build the sample input under ``workdir/input``, run the whole flow, print what landed.

    ``saliency`` turns ``inference.saliency`` on (``medspark demo`` does, unless ``--conf``
    names a file, which then decides): the demo is the showcase, and on its few dozen frames
    Grad-CAM costs seconds. It also runs the waveforms step, so the notebook has ECGs to plot.
    """
    import dataclasses

    from medspark.metrics.runs import recorded_run
    from medspark.pipeline import evaluate, new_run_id, run_all
    from medspark.volumes.steps import volumes
    from medspark.waveforms.step import record_waveforms, run_waveforms

    if saliency and not config.inference.saliency:
        config = dataclasses.replace(
            config, inference=dataclasses.replace(config.inference, saliency=True)
        )
    inputs = build_sample_input(workdir / "input")
    screening, labels = build_screening_export(workdir / "input")
    inputs.append(screening)
    chest = build_chest_series(workdir / "input" / "chest_ct")
    inputs.append(workdir / "input" / "chest_ct")
    inputs.append(build_ecg_export(workdir / "input"))
    print(f"sample input: {workdir / 'input'} (pydicom's files from {pydicom_test_files()})")
    with recorded_run(spark, config, "run", new_run_id()) as record:
        # medspark run's one pass: each item read, de-identified, decoded, preprocessed and
        # inferred once; its three results are shown in turn below.
        ingested, pre, inferred = run_all(spark, [str(p) for p in inputs], config, record)
        print(ingested.summary())
        print("\nscans by modality:")
        scans = _show(spark, config, "scans")
        scans.groupBy("modality").agg(F.count("*").alias("instances")).orderBy("modality").show(
            50, truncate=False
        )
        print("ingest_errors (every input that is not a scan, with its reason):")
        _show(spark, config, "ingest_errors").select("error_class", "message").orderBy(
            "error_class"
        ).show(100, truncate=110)

        print("preprocessing frames (decode, window, OpenCV chain, mask statistics):")
        print(pre.summary())
        _show(spark, config, "images").select(
            "frame", "tensor_shape", "window", "mask_area_px", "mask_area_mm2", "mask_components"
        ).orderBy(F.desc("mask_area_px")).show(8, truncate=False)

        print("inference with the bundled demonstration model (synthetic training data):")
        print(inferred.summary())
        if config.inference.saliency:
            print(
                "saliency (Grad-CAM: where each prediction's evidence is, as a box in the frame):"
            )
            _show(spark, config, "saliency").select(
                "target_class", "peak_value", "bbox_frame"
            ).orderBy(F.desc("peak_value")).show(5, truncate=False)

        print("ECG waveforms (decoded leads, heart rate and intervals):")
        waves = run_waveforms(spark, config, record.run_id)
        record_waveforms(record, waves)
        print(waves.summary())

        print("\nseries as volumes, segmented by the bundled 3D model (synthetic training data):")
        vconfig = demo_volumes_config(config)
        segmented = volumes(spark, vconfig, record.run_id)
        record.rows_out["series"] = segmented.series
        record.rows_out["series_segments"] = segmented.segments
        print(segmented.summary())
        _show(spark, config, "series").groupBy("modality", "verdict").count().orderBy(
            "modality", "verdict"
        ).show(30, truncate=False)
        _show(spark, config, "series_segments").select(
            "label", "volume_ml", "voxel_count", "grid_shape", "seg_path"
        ).orderBy("label").show(10, truncate=80)
        truth = ", ".join(
            f"radius {n[3]:.1f} mm = {v:.2f} mL"
            for n, v in zip(chest.nodules, chest.nodule_volumes_ml(), strict=True)
        )
        print(f"the synthetic chest series' nodule, as generated: {truth}")
    evaluated = evaluate(spark, config, str(labels))
    overall = evaluated.metrics[0]
    print(
        f"\nevaluation on the synthetic screening export ({labels.name}): "
        f"{overall['support']} labelled frame(s), accuracy {overall['accuracy']:.3f}, "
        f"ROC AUC {overall['roc_auc']:.3f}, confusion {overall['confusion_matrix']} "
        f"(rows: true {overall['class_names']})"
    )
    for line in evaluated.summary_lines(config):
        print(line)
    print("\nscanner_utilization (true acquisition days, counts per station):")
    _show(spark, config, "scanner_utilization").select(
        "modality", "station_name", "day", "studies", "instances", "busy_hours"
    ).orderBy("day", "station_name").show(20, truncate=False)
    print(f"warehouse: {config.warehouse}")
    print("notebook:  notebooks/analyst_overview.ipynb (set MEDSPARK_WAREHOUSE to the warehouse)")
