"""DICOM waveforms (ECG): decoding into physical units, ECG metrics, the Spark step."""
