"""medspark forget: a patient leaves every table and every byte of both warehouses, stays out
of later runs, and a forget killed half-way finishes when run again (medspark.erasure)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from deltalake import DeltaTable

from medspark.config import PipelineConfig, with_overrides
from medspark.erasure import erased_hashes, forget, revoke
from medspark.errors import MissingInput
from medspark.metrics.runs import RunRecord
from medspark.pipeline import run_all
from medspark.synthetic import SliceSpec, ct_slice_bytes
from medspark.tables.error_classes import ERASED_SUBJECT
from medspark.tables.schemas import BOOKKEEPING_COLUMNS, TABLES

pytestmark = [pytest.mark.spark, pytest.mark.subprocess]

ALICE = {"patient_id": "PID-ALICE-4711", "patient_name": "Liddell^Alice"}
BOB = {"patient_id": "PID-BOB-0815", "patient_name": "Builder^Bob"}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Two patients, three slices each; Alice's in a folder that names her (paths are
    identity too), one of them in a zip; Bob's loose."""
    root = tmp_path_factory.mktemp("erasure_in")
    for n, (who, folder) in enumerate(((ALICE, "Liddell^Alice"), (BOB, "bob"))):
        where = root / folder
        where.mkdir()
        for i in range(3):
            data = ct_slice_bytes(
                SliceSpec(nodule=i == 1, seed=100 * n + i),
                size=64,
                study_uid=f"1.2.826.0.1.3680043.99.{n}.1",
                series_uid=f"1.2.826.0.1.3680043.99.{n}.1.1",
                instance_number=i + 1,
                **who,
            )
            if who is ALICE and i == 2:
                with zipfile.ZipFile(where / "export.zip", "w") as zf:
                    zf.writestr(f"{folder}/IM{i}.dcm", data)
            else:
                (where / f"IM{i}.dcm").write_bytes(data)
    return root


def _config(warehouse: Path) -> PipelineConfig:
    config = with_overrides(PipelineConfig(), warehouse=str(warehouse))
    return dataclasses.replace(config, deid=dataclasses.replace(config.deid, phi_map=True))


def _run(spark, source: Path, config: PipelineConfig, run_id: str) -> None:
    run_all(spark, [str(source)], config, RunRecord(run_id=run_id, job="run"))


def _rows(config: PipelineConfig, table: str) -> list[dict]:
    path = config.table_path(table)
    if not DeltaTable.is_deltatable(path):
        return []
    rows = DeltaTable(path).to_pyarrow_table().to_pylist()
    return [{k: v for k, v in r.items() if k not in BOOKKEEPING_COLUMNS} for r in rows]


def _subject_values(config: PipelineConfig, key: str) -> dict[tuple[str, ...], set]:
    """Alice's values of every subject column, from scans before the erasure."""
    mine = [r for r in _rows(config, "scans") if r["patient_id"] == key]
    uids = ("sop_instance_uid", "series_instance_uid", "study_instance_uid")
    return {
        ("sop_instance_uid",): {r["sop_instance_uid"] for r in mine},
        ("series_instance_uid",): {r["series_instance_uid"] for r in mine},
        ("source_uri", "archive_member"): {(r["source_uri"], r["archive_member"]) for r in mine},
        ("pseudonym",): {key} | {r[c] for r in mine for c in uids},
    }


def _contents(*folders: str) -> list[tuple[Path, bytes]]:
    """Every file's bytes, and for a Parquet file its decoded values too (a compressed page
    need not hold a value's bytes in one piece)."""
    import pyarrow.parquet as pq

    out = []
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if not path.is_file():
                continue
            data = path.read_bytes()
            if path.suffix == ".parquet":
                data += repr(pq.read_table(path).to_pylist()).encode()
            out.append((path, data))
    return out


def _found(config: PipelineConfig, needles: list[str]) -> list[str]:
    return [
        f"{needle} in {path}"
        for path, data in _contents(config.warehouse, str(config.restricted_root()))
        for needle in needles
        if needle.encode() in data
    ]


def _needles(key: str) -> list[str]:
    return [ALICE["patient_id"], ALICE["patient_name"], "Liddell", key]


def _sorted(rows: list[dict]) -> list[str]:
    return sorted(repr(sorted(r.items())) for r in rows)


def _only_the_subject_removed(
    config: PipelineConfig, before: dict[str, list[dict]], values: dict
) -> None:
    """Every table with someone's rows lost exactly the subject's, nothing else."""
    for name, spec in TABLES.items():
        if not spec.subject:
            continue
        mine = values[spec.subject]
        subject = spec.subject

        def of(r: dict, subject: tuple[str, ...] = subject) -> object:
            return tuple(r[c] for c in subject) if len(subject) > 1 else r[subject[0]]

        kept = [r for r in before[name] if of(r) not in mine]
        assert _sorted(_rows(config, name)) == _sorted(kept), name


@pytest.fixture(scope="module")
def built(spark, source, tmp_path_factory):
    """A warehouse with both patients, and an untouched copy of it (for the kill test)."""
    root = tmp_path_factory.mktemp("erasure_wh")
    config = _config(root / "wh")
    _run(spark, source, config, "erasure-first")
    copy = _config(root / "copy")
    shutil.copytree(config.warehouse, copy.warehouse)
    shutil.copytree(config.restricted_root(), copy.restricted_root())
    return config, copy


def test_forget_with_purge_leaves_no_byte_of_the_patient(spark, pseudo, source, built):
    config, _ = built
    key = pseudo.patient_key(ALICE["patient_id"])
    values = _subject_values(config, key)
    assert len(values[("sop_instance_uid",)]) == 3
    before = {t: _rows(config, t) for t in TABLES}
    # The search finds each value before the erasure: it could fail.
    assert {f.split(" in ")[0] for f in _found(config, _needles(key))} == set(_needles(key))

    result = forget(
        spark, config, patient_id=ALICE["patient_id"], reason="consent withdrawn", purge=True
    )

    removed = {t: n for t, n in result.rows_removed.items() if n}
    assert removed == {
        "scans": 3,
        "images": 3,
        "predictions": 3,
        "restricted_acquisitions": 3,
        "restricted_locations": 3,
        "restricted_phi_map": 6,  # the patient id and the SOP, series and study UIDs
        "series": 1,
    }
    assert _found(config, _needles(key)) == []
    _only_the_subject_removed(config, before, values)
    bob = pseudo.patient_key(BOB["patient_id"])
    assert {r["patient_id"] for r in _rows(config, "scans")} == {bob}
    assert sum(r["instances"] for r in _rows(config, "scanner_utilization")) == 3
    (erasure,) = _rows(config, "restricted_erasures")
    assert erasure["status"] == "done" and erasure["purged"] and erasure["reason"]
    assert erasure["subject_hash"] == pseudo.erasure_hash("patient", key) != key
    log = [r for r in _rows(config, "restricted_access_log") if r["function"] == "forget"]
    assert [r["row_count"] for r in log] == [6]  # three instances, in scans and acquisitions

    # A second forget finds nothing left: it removes nothing, under the same erasure.
    again = forget(spark, config, patient_key=key)
    assert sum(again.rows_removed.values()) == 0 and again.erasure_id == result.erasure_id

    # The same archive ingested again: Alice's items are error rows that name no one.
    _run(spark, source, config, "erasure-again")
    assert {r["patient_id"] for r in _rows(config, "scans")} == {bob}
    erased = [r for r in _rows(config, "ingest_errors") if r["error_class"] == ERASED_SUBJECT]
    assert len(erased) == 3 and all(r["source_uri"].startswith("loc-") for r in erased)
    assert _found(config, _needles(key)) == []

    # Unknown patients are refused; a revoked erasure lets the patient in again.
    with pytest.raises(MissingInput, match="no patient with the given --patient-id"):
        forget(spark, config, patient_id="PID-NOBODY")
    assert revoke(config, patient_id=ALICE["patient_id"]) == 1
    assert erased_hashes(config) == frozenset()


def test_a_forget_killed_half_way_finishes_when_run_again(spark, pseudo, built, tmp_path):
    _, copy = built
    key = pseudo.patient_key(ALICE["patient_id"])
    values = _subject_values(copy, key)
    before = {t: _rows(copy, t) for t in TABLES}
    conf = tmp_path / "phi.yaml"
    conf.write_text("deid:\n  phi_map: true\n")
    command = [
        sys.executable,
        "-m",
        "medspark.cli",
        "forget",
        "--patient-id",
        ALICE["patient_id"],
        "--warehouse",
        copy.warehouse,
        "--conf",
        str(conf),
    ]
    env = {**os.environ, "MEDSPARK_KILL_AFTER": "images"}
    killed = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [r["status"] for r in _rows(copy, "restricted_erasures")] == ["pending"]
    assert any(r["patient_id"] == key for r in _rows(copy, "scans"))  # not finished
    sops = values[("sop_instance_uid",)]
    assert not any(r["sop_instance_uid"] in sops for r in _rows(copy, "images"))

    # Run again (here in this process; a new CLI process does the same): it finishes.
    result = forget(spark, copy, patient_id=ALICE["patient_id"])
    assert result.rows_removed["images"] == 0 and result.rows_removed["scans"] == 3
    assert result.left and "--purge" in result.left[0]  # the replaced files: how to finish
    assert [r["status"] for r in _rows(copy, "restricted_erasures")] == ["done"]
    _only_the_subject_removed(copy, before, values)
