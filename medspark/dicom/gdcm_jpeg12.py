"""A pydicom decoder plugin: JPEG Extended (Process 2 & 4) frames of 12-bit precision, by GDCM.

Transfer Syntax 1.2.840.10008.1.2.4.51 (JPEG Extended) carries 8- or 12-bit samples. pydicom
3.0's own plugins decode only the 8-bit ones: Pillow refuses 12-bit precision, pylibjpeg's
libjpeg rejects the scan header of these files, and pydicom's GDCM plugin refuses 12-bit before
calling GDCM (``pydicom/pixels/decoders/gdcm.py``: "GDCM does not support 'JPEG Extended' for
samples with 12-bit precision"). GDCM itself decodes them: it carries a 12-bit build of the IJG
library. So medspark registers this plugin after pydicom's own (:func:`register`): it is tried
only when they all failed, and only for this transfer syntax.

Checked on pydicom's ``JPEG-lossy.dcm`` (1024 x 256, Bits Stored 12): the frame decoded here is
identical to the one GDCM's own ``gdcm.ImageReader`` gives for the whole file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydicom import uid

try:
    import gdcm

    HAVE_GDCM = True
except ImportError:  # python-gdcm is a dependency, but a broken install must not break imports
    HAVE_GDCM = False

#: pydicom's plugin contract: the packages this plugin needs, per transfer syntax.
DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("python-gdcm>=3.0.10",)}

_LABEL = "medspark-gdcm-12bit"


def is_available(transfer_syntax: str) -> bool:
    """pydicom's plugin contract: whether this plugin can decode ``transfer_syntax``."""
    return HAVE_GDCM and transfer_syntax in DECODER_DEPENDENCIES


def decode_frame(src: bytes, runner: Any) -> bytes:
    """Decode one encapsulated JPEG Extended frame ``src`` into little-endian sample bytes."""
    if runner.bits_stored <= 8:
        # 8-bit frames are pydicom's own plugins' job; if they failed, so would this.
        raise NotImplementedError("8-bit JPEG Extended is left to pydicom's plugins")
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())

    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    pi_type = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi_type))
    if runner.samples_per_pixel > 1:
        image.SetPlanarConfiguration(runner.planar_configuration)
    ts_type = gdcm.TransferSyntax.GetTSType(str(uid.JPEGExtended12Bit))
    image.SetTransferSyntax(gdcm.TransferSyntax(ts_type))
    image.SetPixelFormat(
        gdcm.PixelFormat(
            runner.samples_per_pixel,
            runner.bits_allocated,
            runner.bits_stored,
            runner.bits_stored - 1,
            runner.pixel_representation,
        )
    )
    with _quiet_stderr():  # GDCM first tries its 8-bit IJG codec, which says so on stderr
        frame = image.GetBuffer().encode("utf-8", "surrogateescape")  # char* comes back as str
    expected = runner.rows * runner.columns * runner.samples_per_pixel * runner.bits_allocated // 8
    if len(frame) != expected:
        raise ValueError(f"GDCM decoded {len(frame)} bytes where the frame needs {expected}")
    return frame


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block (GDCM's C++ code writes to it
    directly, so ``sys.stderr`` cannot catch it)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def register() -> None:
    """Add this plugin to pydicom's JPEG Extended decoder, once per process, after pydicom's own
    plugins (so they keep decoding what they can)."""
    from pydicom.pixels.decoders import JPEGExtended12BitDecoder

    known = (JPEGExtended12BitDecoder._available, JPEGExtended12BitDecoder._unavailable)
    if any(_LABEL in plugins for plugins in known):
        return
    JPEGExtended12BitDecoder.add_plugin(_LABEL, (__name__, "decode_frame"))
