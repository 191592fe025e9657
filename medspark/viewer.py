"""The OHIF viewer for ``medspark serve``: installed once from npm, served at ``/viewer``.

OHIF publishes its built application in the npm package ``@ohif/app`` (``dist/``: the page, its
JavaScript chunks, WebAssembly decoders and fonts). :func:`install` downloads the pinned
release's tarball from the npm registry with Python (no Node needed), checks it against the
registry's SHA-512, and unpacks ``dist/`` into the user cache, leaving out the two parts the
DICOMweb view never loads (onnxruntime-web for the AI tools, 136 MB, and the microscopy
viewer, 20 MB). The build assumes it is served at ``/``: every asset path is absolute (the
page's ``src="/..."``, webpack's public path ``"/"`` in the chunk loaders, the fonts' ``url(/``
in the CSS). They are rewritten to ``/viewer/`` once, at install, and ``app-config.js`` is
replaced by one whose only data source is the server's own ``/dicomweb``. Nothing of OHIF is
vendored in this repository.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

LOG = logging.getLogger(__name__)

OHIF_VERSION = "3.13.2"
TARBALL_URL = f"https://registry.npmjs.org/@ohif/app/-/app-{OHIF_VERSION}.tgz"
#: ``dist.integrity`` of the release in the npm registry (``npm view @ohif/app@3.13.2``).
INTEGRITY = (
    "sha512-"
    "WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
)
BASE = "/viewer/"
#: Parts of ``dist/`` the DICOMweb view never loads.
LEFT_OUT = ("ort/", "dicom-microscopy-viewer/")

#: The viewer's configuration: one DICOMweb source, same origin. Thumbnails from frames (the
#: server has no /thumbnail); frames in any transfer syntax (OHIF asks ``transfer-syntax=*``).
APP_CONFIG = """window.config = {
  routerBasename: '/viewer',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  defaultDataSourceName: 'medspark',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'medspark',
      configuration: {
        friendlyName: 'medspark warehouse (de-identified)',
        name: 'medspark',
        qidoRoot: '/dicomweb',
        wadoRoot: '/dicomweb',
        wadoUriRoot: '/dicomweb',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
"""


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/medspark/ohif-<version>`` (``~/.cache`` when unset)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "medspark" / f"ohif-{OHIF_VERSION}"


def installed(folder: Path | None = None) -> Path | None:
    """The installed viewer's folder, or None."""
    folder = folder or default_dir()
    return folder if (folder / "index.html").is_file() else None


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read()


def _check(data: bytes) -> None:
    algorithm, expected = INTEGRITY.split("-", 1)
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise ValueError(f"{TARBALL_URL}: {algorithm} {digest} is not the pinned {expected}")


def _rebase(folder: Path) -> None:
    """Rewrite the build's absolute asset paths from ``/`` to :data:`BASE` (see the module
    docstring) and put :data:`APP_CONFIG` in place."""
    index = folder / "index.html"
    text = index.read_text()
    for old, new in (
        ('href="/', f'href="{BASE}'),
        ('src="/', f'src="{BASE}'),
        ('content="/assets', f'content="{BASE}assets'),
        ('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{BASE}"'),
    ):
        text = text.replace(old, new)
    index.write_text(text)
    for script in folder.glob("*.js"):
        code = script.read_text()
        patched = code.replace('__webpack_require__.p = "/";', f'__webpack_require__.p = "{BASE}";')
        if patched != code:
            script.write_text(patched)
    for sheet in folder.glob("*.css"):
        sheet.write_text(sheet.read_text().replace("url(/", f"url({BASE}"))
    (folder / "app-config.js").write_text(APP_CONFIG)


def install(folder: Path | None = None, url: str = TARBALL_URL) -> Path:
    """Download, check and unpack the viewer into ``folder`` (default :func:`default_dir`);
    returns it. Replaces an earlier install whole (unpacked beside it, then renamed)."""
    folder = folder or default_dir()
    data = _download(url)
    _check(data)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ohif-", dir=folder.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix("package/dist/")
                if name == member.name or not member.isfile() or name.startswith(LEFT_OUT):
                    continue
                target = staging / name
                if not target.resolve().is_relative_to(staging.resolve()):
                    continue  # a path out of the folder: never written
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is not None:
                    target.write_bytes(source.read())
        _rebase(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
