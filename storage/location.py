"""Where stored data lives: a local folder or an object-store URL (`s3://bucket/prefix`), behind the
handful of operations the store needs.

Local folders keep their POSIX guarantees (atomic rename and replace, positioned reads). Any other
URL goes through fsspec (s3fs for `s3://`, or whatever fsspec knows: `gs://`, `az://`, `memory://`),
configured the way every tool on a cluster already is: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_ENDPOINT_URL` (MinIO, Ceph, ...) in the environment, so Ray and Prefect workers need nothing
but those variables.

A Location crosses process borders as its URL (Dask tasks, Ray workers) and makes its filesystem
afresh in a forked child: fsspec's async clients must not be shared across a fork.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import uuid
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from storage.scratch import scratch_beside

LOCAL = LocalFileSystem()
# Object-store listings must be fresh: Dask workers and other nodes publish cases behind our back.
REMOTE_OPTIONS = {"use_listings_cache": False}


class Location:
    """A file or folder, local or remote. Build one with `Location.of(path_or_url)`."""

    def __init__(self, url: str):
        self.url = url
        self.is_local = "://" not in url
        self.path = url if self.is_local else url.split("://", 1)[1].rstrip("/")
        self._fs, self._pid = None, None

    @classmethod
    def of(cls, where: str | os.PathLike | Location) -> Location:
        if isinstance(where, Location):
            return where
        text = os.fspath(where) if isinstance(where, os.PathLike) else str(where)
        if text.startswith("file://"):
            text = text.removeprefix("file://")
        if "://" not in text:  # absolute: the path travels to workers with other working directories
            return cls(str(Path(text).expanduser().absolute()))
        location = cls(text.rstrip("/"))
        location.fs  # noqa: B018 - an unknown protocol or a missing backend fails here, naming the URL
        return location

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self.is_local:
            return LOCAL
        if self._fs is None or self._pid != os.getpid():
            try:
                self._fs = fsspec.core.url_to_fs(self.url, **REMOTE_OPTIONS)[0]
            except ImportError as error:
                # s3fs is one of mvg-pipeline's own dependencies; other protocols need their fsspec backend
                raise ImportError(f"{self.url}: {error} (install the fsspec backend of this protocol: gcsfs for gs://, "
                                  "adlfs for az://; s3fs, for s3://, comes with mvg-pipeline)") from None
            except ValueError as error:
                raise ValueError(f"{self.url}: {error}") from None
            self._pid = os.getpid()
        return self._fs

    # ------------------------------------------------------------------------------- naming

    def __truediv__(self, name: str) -> Location:
        return Location(posixpath.join(self.url, name) if not self.is_local else os.path.join(self.url, name))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> Location:
        return Location(os.path.dirname(self.url) if self.is_local else f"{self.url.split('://')[0]}://{posixpath.dirname(self.path)}")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __fspath__(self) -> str:
        if not self.is_local:
            raise TypeError(f"{self.url} is not a local path")
        return self.url

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __reduce__(self):
        return Location, (self.url,)

    # ------------------------------------------------------------------------------- reading

    def exists(self) -> bool:
        return os.path.exists(self.url) if self.is_local else self.fs.exists(self.path)

    def is_dir(self) -> bool:
        return os.path.isdir(self.url) if self.is_local else self.fs.isdir(self.path)

    def folders(self) -> list[Location]:
        """The sub-folders (object-store prefixes), sorted by name; none when this is not a folder."""
        if self.is_local:
            if not os.path.isdir(self.url):
                return []
            return [self / entry.name for entry in sorted(os.scandir(self.url), key=lambda e: e.name) if entry.is_dir()]
        try:
            entries = self.fs.ls(self.path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted((self / posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory"), key=str)

    def read_bytes(self) -> bytes:
        if self.is_local:
            return Path(self.url).read_bytes()
        return self.fs.cat_file(self.path)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def read_range(self, start: int, length: int) -> bytes:
        """`length` bytes from `start`: one positioned read locally, one ranged GET remotely."""
        if self.is_local:
            with open(self.url, "rb") as file:
                return os.pread(file.fileno(), length, start)
        return self.fs.cat_file(self.path, start=start, end=start + length)

    def read_tail(self, length: int) -> bytes:
        """The last `length` bytes, or the whole file when it is shorter (a truncated file's
        reader then sees how short it is, as from an object store)."""
        if self.is_local:
            with open(self.url, "rb") as file:
                file.seek(max(os.fstat(file.fileno()).st_size - length, 0))
                return file.read(length)
        return self.fs.cat_file(self.path, start=-length)

    def size(self) -> int:
        return os.path.getsize(self.url) if self.is_local else self.fs.size(self.path)

    def cached_copy(self, cache: Path) -> Location:
        """A local copy of this remote file under `cache`, downloaded once per version of the
        object: its URL, ETag (or modification time) and size name the copy, so a re-ingested case
        is fetched again and an unchanged one never is."""
        info = self.fs.info(self.path)
        version = info.get("ETag") or info.get("LastModified") or info.get("mtime") or info.get("created")
        key = hashlib.blake2b(f"{self.url}|{version}|{info.get('size')}".encode(), digest_size=16).hexdigest()
        local = Path(cache) / key[:2] / f"{key}-{self.name}"
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(f".{local.name}.{uuid.uuid4().hex}")  # concurrent readers each write their own
            try:
                self.fs.get_file(self.path, str(partial))
                os.replace(partial, local)
            finally:
                partial.unlink(missing_ok=True)
        return Location(str(local))

    # ------------------------------------------------------------------------------- writing

    def write_bytes(self, data: bytes) -> None:
        """Replace the file whole, atomically: readers see the old bytes or the new, never a part.
        Locally a temporary file renamed over it; an object store's single PUT is atomic already."""
        if not self.is_local:
            self.fs.pipe_file(self.path, data)
            return
        folder = os.path.dirname(self.url)
        os.makedirs(folder, exist_ok=True)
        handle, temporary = scratch_beside(self.url)  # the umask's mode: mkstemp's 0600 would hide it from others
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, self.url)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def upload(self, files: list[tuple[Path, str]]) -> None:
        """Copy local files to `self / relative` (remote only), in one batched request."""
        self.fs.put([str(local) for local, _ in files], [posixpath.join(self.path, relative) for _, relative in files])

    def remove_tree(self) -> None:
        if self.is_local:
            shutil.rmtree(self.url, ignore_errors=True)
        elif self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)

    def zarr_store(self, read_only: bool = False):
        """The zarr-python store rooted here."""
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(self.url, read_only=read_only)
        return FsspecStore.from_url(self.url, storage_options=dict(REMOTE_OPTIONS), read_only=read_only)
