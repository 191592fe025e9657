"""Waveform decoding and ECG metrics: pure numpy, no Spark (tests/test_waveforms_spark.py has
the step). Real DICOM throughout: pydicom's waveform_ecg.dcm and synthetic 12-lead ECG files
written and read back with pydicom."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest

from medspark.tables.error_classes import (
    BAD_CHANNEL_DEFINITION,
    NO_WAVEFORM,
    UNSUPPORTED_WAVEFORM,
    WAVEFORM_DATA_TOO_SHORT,
    WAVEFORM_TOO_LARGE,
)
from medspark.waveforms.decode import (
    WaveformError,
    alaw_to_linear,
    decode_waveforms,
    mulaw_to_linear,
)
from medspark.waveforms.ecg import analyse_instance, analyse_lead
from medspark.waveforms.synthetic import ECG_12_LEAD, simulate_12_lead, write_ecg


@pytest.fixture(scope="module")
def real_ecg(test_files):
    return pydicom.dcmread(test_files / "waveform_ecg.dcm")


@pytest.fixture(scope="module")
def real_metrics(real_ecg):
    return analyse_instance(decode_waveforms(real_ecg))


def test_decode_matches_pydicom_waveform_array(real_ecg):
    channels = decode_waveforms(real_ecg)
    assert len(channels) == 24  # two multiplex groups (RHYTHM, MEDIAN BEAT) x 12 leads
    for group in (0, 1):
        mine = np.stack([c.samples for c in channels if c.group == group], axis=1)
        np.testing.assert_array_equal(mine, real_ecg.waveform_array(group).astype(np.float32))
    first = channels[0]
    assert (first.lead, first.units, first.sampling_frequency) == ("Lead I (Einthoven)", "uV", 1000)
    assert first.n_samples == 10_000 and first.duration_s == 10.0
    assert channels[12].n_samples == 1200
    # raw 80 x Channel Sensitivity 1.25 uV x correction 1 + baseline 0
    raw = np.frombuffer(real_ecg.WaveformSequence[0].WaveformData, "<i2")
    assert first.samples[0] == raw[0] * 1.25 == 100.0


def test_sensitivity_correction_and_baseline_are_applied(tmp_path):
    ds = pydicom.dcmread(write_ecg(tmp_path / "e.dcm", 72))
    item = ds.WaveformSequence[0].ChannelDefinitionSequence[1]
    item.ChannelSensitivity = "2"
    item.ChannelSensitivityCorrectionFactor = "1.5"
    item.ChannelBaseline = "-40"
    raw = np.frombuffer(ds.WaveformSequence[0].WaveformData, "<i2").reshape(-1, 12)[:, 1]
    lead_ii = decode_waveforms(ds)[1]
    np.testing.assert_allclose(lead_ii.samples, raw * 2 * 1.5 - 40, rtol=1e-6)
    # pydicom's as_raw=False conversion is the same formula (PS3.3 C.10.9.1.4.2).
    np.testing.assert_allclose(lead_ii.samples, ds.waveform_array(0)[:, 1], rtol=1e-6)


def test_g711_expansion_matches_audioop():
    audioop = pytest.importorskip("audioop")  # removed in Python 3.13
    codes = np.arange(256, dtype=np.uint8)
    for mine, theirs in (
        (mulaw_to_linear(codes), audioop.ulaw2lin(codes.tobytes(), 2)),
        (alaw_to_linear(codes), audioop.alaw2lin(codes.tobytes(), 2)),
    ):
        np.testing.assert_array_equal(mine, np.frombuffer(theirs, "<i2"))


def test_mulaw_group_is_expanded(tmp_path):
    ds = pydicom.dcmread(write_ecg(tmp_path / "e.dcm", 72))
    group = ds.WaveformSequence[0]
    codes = np.array([0xFF, 0x80, 0x00, 0x7F], dtype=np.uint8)  # +0, +max, -max, -0
    group.NumberOfWaveformChannels = 1
    group.NumberOfWaveformSamples = 4
    group.ChannelDefinitionSequence = group.ChannelDefinitionSequence[:1]
    group.WaveformBitsAllocated = 8
    group.WaveformSampleInterpretation = "MB"
    group.WaveformData = codes.tobytes()
    (channel,) = decode_waveforms(ds)
    assert channel.samples.tolist() == [0.0, 32124 * 2.5, -32124 * 2.5, 0.0]


def _broken(tmp_path, change):
    ds = pydicom.dcmread(write_ecg(tmp_path / "e.dcm", 72))
    change(ds.WaveformSequence[0])
    return ds


@pytest.mark.parametrize(
    ("change", "error_class", "text"),
    [
        (
            lambda g: setattr(g, "NumberOfWaveformChannels", 11),
            BAD_CHANNEL_DEFINITION,
            "Number of Waveform Channels (003A,0005) is 11 but the Channel Definition "
            "Sequence (003A,0200) has 12",
        ),
        (
            lambda g: delattr(g.ChannelDefinitionSequence[3], "ChannelSensitivityUnitsSequence"),
            BAD_CHANNEL_DEFINITION,
            "channel 3: Channel Sensitivity (003A,0210) without Channel Sensitivity Units",
        ),
        (
            lambda g: setattr(g, "WaveformData", g.WaveformData[:-2]),
            WAVEFORM_DATA_TOO_SHORT,
            "has 119998 bytes; 12 channel(s) x 5000 samples x 2 byte(s) need 120000",
        ),
        (  # empty on disk: pydicom reads None (the reason was a TypeError on NoneType)
            lambda g: setattr(g, "WaveformData", None),
            WAVEFORM_DATA_TOO_SHORT,
            "has 0 bytes; 12 channel(s) x 5000 samples x 2 byte(s) need 120000",
        ),
        (
            lambda g: setattr(g, "WaveformSampleInterpretation", "UB"),
            UNSUPPORTED_WAVEFORM,
            "16 with Waveform Sample Interpretation (5400,1006) 'UB'",
        ),
        (lambda g: delattr(g, "SamplingFrequency"), BAD_CHANNEL_DEFINITION, "SamplingFrequency"),
    ],
)
def test_bad_channel_definitions_raise_declared_classes(tmp_path, change, error_class, text):
    with pytest.raises(WaveformError) as err:
        decode_waveforms(_broken(tmp_path, change))
    assert err.value.error_class == error_class
    assert err.value.group == 0
    assert text in str(err.value)


def test_no_waveform_and_size_limit(tmp_path, test_files):
    with pytest.raises(WaveformError) as err:
        decode_waveforms(pydicom.dcmread(test_files / "CT_small.dcm"))
    assert err.value.error_class == NO_WAVEFORM
    ds = pydicom.dcmread(write_ecg(tmp_path / "e.dcm", 72))
    with pytest.raises(WaveformError) as err:
        decode_waveforms(ds, max_samples=12 * 5000 - 1)
    assert err.value.error_class == WAVEFORM_TOO_LARGE
    assert len(decode_waveforms(ds, max_samples=12 * 5000)) == 12


def test_synthetic_file_is_12_lead_ecg_storage(tmp_path):
    ds = pydicom.dcmread(write_ecg(tmp_path / "e.dcm", 60, station_name="CART-7"))
    assert ds.SOPClassUID == ECG_12_LEAD == ds.file_meta.MediaStorageSOPClassUID
    assert (ds.Modality, ds.StationName) == ("ECG", "CART-7")
    channels = decode_waveforms(ds)
    assert [c.lead for c in channels][:3] == ["Lead I (Einthoven)", "Lead II", "Lead III"]
    # Einthoven: III = II - I, within the 2.5 uV quantisation of each lead.
    i, ii, iii = (channels[k].samples.astype(float) for k in range(3))
    assert np.max(np.abs(iii - (ii - i))) <= 2 * 2.5 + 1e-6


@pytest.mark.parametrize("rate", [50, 72, 120])
def test_heart_rate_of_synthetic_ecg_files_within_2_bpm(tmp_path, rate):
    ds = pydicom.dcmread(write_ecg(tmp_path / f"ecg{rate}.dcm", rate, seed=rate))
    summary, leads = analyse_instance(decode_waveforms(ds))
    assert summary.reason is None
    assert summary.analysis_lead == "Lead II"
    assert abs(summary.heart_rate_bpm - rate) <= 2
    assert abs(summary.rr_mean_ms - 60_000 / rate) <= 20
    assert summary.rr_sd_ms < 10  # the synthetic heart beats at an exact rate
    assert summary.n_beats == pytest.approx(10 * rate / 60, abs=1.5)
    assert summary.quality > 0.95
    assert len(leads) == 12 and summary.leads_measured >= 8
    # Intervals of the wave model: P onset ~-0.22 s, QRS ~-0.046..+0.046 s (see synthetic.py).
    assert 150 <= summary.pr_ms <= 210
    assert 50 <= summary.qrs_ms <= 110
    assert summary.qt_ms < summary.rr_mean_ms


def test_real_pydicom_ecg_gives_plausible_values_near_the_vendors(real_ecg, real_metrics):
    summary, leads = real_metrics
    # The file's own Waveform Annotation Sequence (0040,B020), measured by the Mortara cart:
    vendor = {
        a.ConceptNameCodeSequence[0].CodeMeaning: float(a.NumericValue)
        for a in real_ecg.WaveformAnnotationSequence
        if "NumericValue" in a and "ConceptNameCodeSequence" in a
    }
    assert vendor["RR Interval"] == 982
    assert abs(summary.rr_mean_ms - vendor["RR Interval"]) < 5
    assert summary.heart_rate_bpm == pytest.approx(61.07, abs=0.1)
    assert summary.n_beats == 10 and summary.group == 0  # the RHYTHM group, not MEDIAN BEAT
    assert summary.leads_measured == 12 and len(leads) == 12
    # Automatic delineation against the vendor's (PR 161, QRS 75, QT 368 ms): within 40 ms.
    assert abs(summary.pr_ms - vendor["PR Interval"]) <= 40
    assert abs(summary.qrs_ms - vendor["QRS Duration"]) <= 40
    assert abs(summary.qt_ms - vendor["QT Interval"]) <= 60
    assert 0.8 < summary.quality <= 1


def test_unanalysable_leads_get_null_metrics_and_a_reason():
    rng = np.random.default_rng(1)
    cases = {
        "too short": simulate_12_lead(72, duration=2.0)[:, 1],
        "flat": np.full(5000, 0.3),
        "beat(s) found": rng.normal(0, 1, 5000),
        "noisy": simulate_12_lead(72, noise_mv=1.0, seed=3)[:, 1],
    }
    for reason, signal in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = analyse_lead(signal, 500.0, "Lead II")
        assert m.heart_rate_bpm is None, reason
        assert m.qt_ms is None and m.rr_mean_ms is None
        assert reason in m.reason


def test_instance_without_measurable_lead_has_reason(tmp_path):
    ds = pydicom.dcmread(write_ecg(tmp_path / "e.dcm", 72, duration=3.0))
    summary, leads = analyse_instance(decode_waveforms(ds))
    assert summary.heart_rate_bpm is None
    assert summary.reason.startswith("no lead could be analysed: too short: 3.00 s")
    assert len(leads) == 12 and all(m.reason for m in leads)


def test_process_instance_rows_and_error_row(tmp_path, test_files):
    from medspark.waveforms.step import ERROR, METRICS, WAVEFORM, WAVEFORM_ROWS, process_instance

    key = {"sop_instance_uid": "2.25.1", "source_uri": "file:///x/e.dcm", "archive_member": None}
    rows = process_instance((test_files / "waveform_ecg.dcm").read_bytes(), key, method="nk")
    kinds = [r["kind"] for r in rows]
    assert kinds.count(WAVEFORM) == 24 and kinds.count(METRICS) == 13  # instance + 12 leads
    assert all(set(r) <= set(WAVEFORM_ROWS.fieldNames()) for r in rows)
    instance = next(r for r in rows if r["kind"] == METRICS and r["lead"] is None)
    assert instance["heart_rate_bpm"] == pytest.approx(61.07, abs=0.1)
    assert instance["multiplex_group"] == 0 and instance["method"] == "nk"
    bad = write_ecg(tmp_path / "bad.dcm", 72, bad_channel_count=True)
    (row,) = process_instance(bad.read_bytes(), {**key, "source_uri": "file:///x/bad.dcm"})
    assert row["kind"] == ERROR and row["error_class"] == BAD_CHANNEL_DEFINITION
    assert row["message"].startswith("file:///x/bad.dcm: multiplex group 0: Number of Waveform")
    (row,) = process_instance(b"not dicom at all", key)
    assert row["kind"] == ERROR and row["error_class"] == "not_dicom"


def test_lead_names_given_twice_stay_unique(tmp_path):
    ds = pydicom.dcmread(write_ecg(tmp_path / "e.dcm", 72, duration=6.0))
    for item in ds.WaveformSequence[0].ChannelDefinitionSequence:
        item.ChannelSourceSequence[0].CodeMeaning = "Lead II"  # a cart that labels badly
    summary, leads = analyse_instance(decode_waveforms(ds))
    names = [m.lead for m in leads]
    assert len(set(names)) == 12 and names[3] == "Lead II (channel 3)"
    assert summary.analysis_lead in names  # no lead is plain "Lead II": the best quality one
    assert abs(summary.heart_rate_bpm - 72) <= 2


def test_waveform_batches_reread_check_sha_and_cut_batches(tmp_path, test_files):
    import hashlib

    import pandas as pd

    from medspark.sources.archives import to_uri
    from medspark.waveforms.step import WaveformSettings, waveform_batches

    files = [write_ecg(tmp_path / f"e{r}.dcm", r, duration=6.0) for r in (60, 90)]
    uris = [to_uri(str(p)) for p in files]
    shas = [hashlib.sha256(files[0].read_bytes()).hexdigest(), "0" * 64]  # the 2nd changed
    batch = pd.DataFrame(
        {"sop_instance_uid": ["a", "b"], "source_uri": uris, "archive_member": [None, None]}
    ).assign(sha256=shas)
    settings = WaveformSettings(samples_per_batch=12 * 3000)  # one 6 s 500 Hz ECG per batch
    out = list(waveform_batches(iter([batch]), settings))
    assert len(out) == 2  # cut after the first instance's 36,000 samples
    first, second = out
    assert (first["kind"] == "waveform").sum() == 12 and first["sop_instance_uid"].eq("a").all()
    instance = first[(first["kind"] == "metrics") & first["lead"].isna()].iloc[0]
    assert abs(instance["heart_rate_bpm"] - 60) <= 2
    assert first["samples"].iloc[0].dtype == np.float32
    (row,) = second.itertuples()
    assert (row.kind, row.error_class) == ("error", "source_changed")
    assert "changed since ingest" in row.message
