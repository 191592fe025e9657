"""medspark.dicom."""
