"""Series as volumes: geometry, the series table, volume assembly, 3D preprocessing and
segmentation (issue 12)."""
