"""Fetching dataset files over the network: mirrors tried in turn, MD5-checked, written atomically."""

from __future__ import annotations

import hashlib
import http.client
import logging
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, cast

from memaware.errors import DataError
from memaware.files import atomic_path

__all__ = ["DEFAULT_CACHE_ROOT", "UrlOpener", "download_files"]

log = logging.getLogger(__name__)

#: Where downloads go when the caller names no folder: one subfolder per dataset.
DEFAULT_CACHE_ROOT = Path("~/.cache/memaware")
DOWNLOAD_TIMEOUT_S = 60.0

#: Opens a URL for reading; ``urllib.request.urlopen`` fits, and tests pass their own.
UrlOpener = Callable[[str], IO[bytes]]


class _FetchFailed(Exception):
    """One URL did not deliver the file (network error or wrong MD5); the next one is tried."""


def _urlopen(url: str) -> IO[bytes]:
    # Some mirrors refuse urllib's default User-Agent.
    request = urllib.request.Request(url, headers={"User-Agent": "memaware"})
    return cast(IO[bytes], urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S))


def download_files(
    filenames: Iterable[str],
    base_urls: Sequence[str],
    dest: str | Path,
    *,
    checksums: Mapping[str, str] | None = None,
    opener: UrlOpener | None = None,
) -> dict[str, Path]:
    """Make sure every file in ``filenames`` is in ``dest``; return ``{filename: path}``.

    Files already present are kept. A missing file is fetched from ``base_url + filename``
    for each base URL in turn until one succeeds; it is streamed to a temporary file in
    ``dest``, checked against its MD5 in ``checksums`` when one is given, then renamed into
    place (:func:`memaware.files.atomic_path`), so an interrupted or refused download never
    leaves a partial file under the final name. ``opener`` opens a URL (default:
    ``urllib.request.urlopen``, which also serves ``file://`` URLs).

    Raises:
        DataError: ``dest`` cannot be written, or no base URL delivered a file.
    """
    dest = Path(dest).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the download folder {dest}: {exc}") from exc
    open_url = opener or _urlopen
    paths: dict[str, Path] = {}
    for filename in filenames:
        target = dest / filename
        if not target.is_file():
            expected_md5 = (checksums or {}).get(filename)
            _download_one(filename, base_urls, target, expected_md5, open_url)
        paths[filename] = target
    return paths


def _download_one(
    filename: str,
    base_urls: Sequence[str],
    target: Path,
    expected_md5: str | None,
    open_url: UrlOpener,
) -> None:
    failures: list[str] = []
    for base in base_urls:
        url = (base if base.endswith("/") else base + "/") + filename
        try:
            with atomic_path(target) as tmp:
                _fetch(url, tmp, expected_md5, open_url)
            return
        except _FetchFailed as exc:
            failures.append(str(exc))
        except OSError as exc:
            # Raised by atomic_path itself: the folder refuses the temporary file or the rename.
            raise DataError(
                f"cannot write {target} in the download folder {target.parent}: "
                f"{exc.strerror or exc}; check the folder's permissions and free space"
            ) from exc
    tried = "; ".join(failures) if failures else "no base URL given"
    raise DataError(
        f"could not download {filename} into {target.parent} ({tried}); check the network "
        f"connection, or put the file there by hand, or pass --data-dir with the dataset's files"
    )


def _fetch(url: str, tmp: Path, expected_md5: str | None, open_url: UrlOpener) -> None:
    """Stream ``url`` into ``tmp``; :class:`_FetchFailed` if it fails or its MD5 is wrong."""
    log.info("downloading %s", url)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with tmp.open("wb") as out, open_url(url) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    # URLError and HTTPError are OSErrors; ValueError covers malformed URLs.
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _FetchFailed(f"{url}: {exc}") from exc
    if expected_md5 is not None and digest.hexdigest() != expected_md5:
        raise _FetchFailed(f"{url}: MD5 {digest.hexdigest()}, expected {expected_md5}")
