"""Streaming reads of plain, gzip and zstd files that notice when a compressed file is cut short.

Python's gzip module raises ``EOFError`` at a truncated end. zstandard's ``stream_reader`` does not: a
file cut in the middle of a frame just ends early, and its lost lines would vanish without a trace. The
zstd reader here checks that the last frame was complete and raises ``EOFError`` otherwise.
"""

from __future__ import annotations

import gzip
import io
from typing import IO

from mai.errors import MaiError

ZSTD_SUFFIXES = (".zst", ".zstd")
_CHUNK = 1 << 20


class _ZstdRaw(io.RawIOBase):
    """Decompressed bytes of a (multi-frame) zstd file; ``EOFError`` when the last frame is incomplete."""

    def __init__(self, path: str) -> None:
        import zstandard

        self._zstd = zstandard
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._inflate = zstandard.ZstdDecompressor().decompressobj()
        self._pending = b""
        self._started = False  # the current frame has received input

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Decompress more input into ``_pending``; False at the clean end of the file."""
        while not self._pending:
            chunk = self._file.read(_CHUNK)
            if not chunk:
                if self._started and not self._inflate.eof:
                    raise EOFError("the file ends in the middle of a zstd frame (truncated)")
                return False
            while chunk:
                self._started = True
                try:
                    self._pending += self._inflate.decompress(chunk)
                except self._zstd.ZstdError as exc:  # as gzip does: corrupt data is an OSError
                    raise OSError(f"corrupt zstd data ({exc})") from None
                chunk = b""
                if self._inflate.eof:  # a frame ended: the rest of the input starts the next one
                    chunk = self._inflate.unused_data
                    self._inflate = self._zstd.ZstdDecompressor().decompressobj()
                    self._started = False
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._fill():
            return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def open_compressed(path: str) -> IO[bytes]:
    """Open a plain, ``.gz`` or ``.zst`` file for streaming binary reads (line iteration works)."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(ZSTD_SUFFIXES):
        try:
            return io.BufferedReader(_ZstdRaw(path), _CHUNK)
        except ImportError:
            raise MaiError(f"reading {path} needs zstandard: pip install 'mai[data]'") from None
    return open(path, "rb")  # noqa: SIM115 - the caller closes it
