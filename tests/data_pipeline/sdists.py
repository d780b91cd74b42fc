"""Real input that nobody on this project wrote: files from the source archives of PyPI packages.

pywb's sdist ships the WARC files its own tests replay (real captures of iana.org, example.com …);
trafilatura's ships saved web pages. The archive is fetched once with ``pip download --no-deps`` into a
cache folder (``MAI_TEST_CACHE``, default ``~/.cache/mai-tests``) and read from the archive itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

PYWB = ("pywb", "2.10.0")
TRAFILATURA = ("trafilatura", "2.3.1")


def sdist(name: str, version: str) -> Path:
    """The package's source archive (downloaded on first use)."""
    from filelock import FileLock

    folder = Path(os.environ.get("MAI_TEST_CACHE", Path.home() / ".cache" / "mai-tests")) / "sdists"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f"{name}.lock")):  # test workers running side by side download it once
        found = sorted(folder.glob(f"{name}-{version}.tar.gz"))
        if not found:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                            ":all:", f"{name}=={version}", "-d", str(folder)],
                           check=True, capture_output=True)
            found = sorted(folder.glob(f"{name}-{version}.tar.gz"))
    assert found, f"pip download of {name}=={version} left no source archive in {folder}"
    return found[0]


def member(package: tuple[str, str], path: str) -> bytes:
    """One file of a package's source archive, by its path below the archive's top folder."""
    name, version = package
    with tarfile.open(sdist(name, version)) as tar:
        fh = tar.extractfile(f"{name}-{version}/{path}")
        assert fh is not None, f"{path} is not a file in {name} {version}"
        return fh.read()
