"""Where studies live: a local (or shared) folder, or an object store (`s3://bucket/prefix`, or any URI
pyarrow or fsspec resolves), behind one small interface (issue 12).

`Storage.resolve(text)` turns a `--storage` string into a pyarrow FileSystem and a path on it, and offers
the few operations the orchestrator needs: exists / read / write / list, a local copy of a study for the
report, and upload of the report back beside the study.  Tune gets the same (path, file system) pair, so
its trials write checkpoints straight to the store.  Other modules ask at most `is_local` (the
default sqlite MLflow store needs a folder); none branches on the kind of store.

Credentials come only from the SDK's standard chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/
AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, an instance or pod role): a URI that carries credentials is
refused, so they never reach flags, logs, study.json or MLflow.  Custom S3-compatible endpoints are set
the way the AWS SDKs read them, `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`: pyarrow's
`FileSystem.from_uri` (used here and by Ray) reads both from pyarrow 15 on (apache/arrow#36791, #39160;
its `S3FileSystem()` constructor does not, apache/arrow#49643), and boto3 (MLflow's S3 artifacts) reads
them too.  pyarrow pickles a resolved S3 file system with its endpoint and never
with the credentials, so a trial on another node reaches the same endpoint and signs with its own node's
credentials; `worker_env()` forwards the endpoint and region variables to Ray's workers as well.
"""
from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

# the CLI logs at INFO: botocore would announce where it found credentials on every client it makes
logging.getLogger("botocore").setLevel(logging.WARNING)
MIN_FREE_BYTES = int(os.environ.get("DCNN_MIN_FREE_MB", "64")) * 2**20
# non-secret settings of the AWS SDKs that Ray's workers must share with the driver (never credentials)
WORKER_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
_SECRET_QUERY = {"access_key", "secret_key", "session_token", "password", "token"}


class Storage:
    """A folder on a file system: `fs` (pyarrow) and `path` on it, `uri` as the user wrote it (for
    messages and records).  An object store is resolved on first use, not when the flag is parsed: on
    AWS that asks the bucket's region over the network, which belongs with the other storage checks
    (`check_writable`), not with option parsing."""

    def __init__(self, uri: str, fs: pafs.FileSystem | None = None, path: str | None = None,
                 flag: str = "--storage", source: str | None = None, parent: "Storage | None" = None,
                 name: str | None = None):
        self.uri, self.flag = uri.rstrip("/") if uri != "/" else uri, flag
        self._fs, self._path = fs, path
        self._source = source or uri  # the URI pyarrow resolves (with any ?region=... options)
        self._parent, self._name = parent, name

    # -- resolving ---------------------------------------------------------------------------------
    @classmethod
    def resolve(cls, text, flag: str = "--storage", absolute: bool = True) -> "Storage":
        """A local path (absolute unless `absolute=False`), or a URI pyarrow (s3://, gs://, hdfs://,
        file://) or fsspec resolves."""
        if isinstance(text, Storage):
            return text
        text = str(text)
        if "://" not in text:
            if not absolute:
                text = os.path.abspath(text)
            if not os.path.isabs(text):
                raise ValueError(f"{flag} must be an absolute path (trials run in other directories) or an "
                                 f"object-store URI such as s3://bucket/prefix, got {text!r}")
            path = os.path.normpath(text)
            return cls(path, pafs.LocalFileSystem(), path, flag)
        parts = urlsplit(text)
        if parts.username or parts.password or _SECRET_QUERY & {k.lower() for k in parse_qs(parts.query)}:
            raise ValueError(f"{flag}: the URI carries credentials; refusing it (they would appear in logs, "
                             f"study.json and MLflow). Give credentials the SDK's standard way: "
                             f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws, or an "
                             f"instance/pod role")
        if parts.scheme == "file":
            return cls.resolve(parts.path, flag)
        if not parts.netloc:
            raise ValueError(f"{flag} {text!r}: expected SCHEME://BUCKET/PREFIX, e.g. s3://my-bucket/studies")
        if parts.scheme not in _known_schemes():
            raise ValueError(f"{flag} {text!r}: unknown storage scheme {parts.scheme!r}; use an absolute folder, "
                             f"s3://BUCKET/PREFIX, or another URI pyarrow or fsspec knows (gs://, abfs://, "
                             f"hdfs://, ...)")
        return cls(f"{parts.scheme}://{parts.netloc}{parts.path}", flag=flag, source=text)

    def _resolve(self) -> None:
        if self._fs is not None:
            return
        if self._parent is not None:
            self._fs, self._path = self._parent.fs, f"{self._parent.path}/{self._name}"
            return
        try:
            fs, path = pafs.FileSystem.from_uri(self._source)
        except pa.ArrowInvalid as e:  # a scheme pyarrow does not know
            fs, path = _fsspec(self._source, self.flag, e)
        except OSError as e:  # e.g. the bucket's region could not be asked for
            raise ValueError(f"{self.flag} {self.uri}: cannot reach the store ({_first_line(e)}); check the "
                             f"network, the bucket name and the endpoint (AWS_ENDPOINT_URL_S3 / "
                             f"AWS_ENDPOINT_URL for an S3-compatible store)") from None
        self._fs, self._path = fs, path.rstrip("/") or "/"

    @property
    def fs(self) -> pafs.FileSystem:
        self._resolve()
        return self._fs

    @property
    def path(self) -> str:
        self._resolve()
        return self._path

    @property
    def scheme(self) -> str:
        return urlsplit(self.uri).scheme if "://" in self.uri else ""

    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def local_path(self) -> Path:
        """The folder itself when it is on this machine's file system."""
        if not self.is_local:
            raise ValueError(f"{self.uri} is not a local folder")
        return Path(self.path)

    def __truediv__(self, name: str) -> "Storage":
        if self.is_local:
            return Storage(f"{self.uri}/{name}", self._fs, f"{self._path}/{name}", self.flag)
        return Storage(f"{self.uri}/{name}", flag=self.flag, parent=self, name=name)

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    @property
    def name(self) -> str:
        return PurePosixPath(self.uri).name

    def tune_location(self) -> tuple[str, pafs.FileSystem | None]:
        """(storage_path, storage_filesystem) for Tune's RunConfig / Tuner.restore / can_restore."""
        return (self.path, None) if self.is_local else (self.path, self.fs)

    def artifact_uri(self) -> str:
        """This folder as a URI MLflow's artifact stores understand (file:// or the store's scheme)."""
        return self.local_path.resolve().as_uri() if self.is_local else self.uri

    # -- reading and writing -----------------------------------------------------------------------
    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def _p(self, rel: str = "") -> str:
        return f"{self.path}/{rel}" if rel else self.path

    def exists(self, rel: str = "") -> bool:
        return self.fs.get_file_info(self._p(rel)).type != pafs.FileType.NotFound

    def is_file(self, rel: str = "") -> bool:
        return self.fs.get_file_info(self._p(rel)).type == pafs.FileType.File

    def is_empty(self) -> bool:
        """True when nothing is stored under this folder (or it does not exist)."""
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return True
        if info.type == pafs.FileType.File:
            return False
        return not self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self._p(rel)) as f:
            return f.read()

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Whole-file write; atomic on both kinds (rename locally, one PUT on an object store).  A local
        write that fails (a full disk) leaves the previous file as it was and no temporary behind."""
        target = self._p(rel)
        self.fs.create_dir(str(PurePosixPath(target).parent), recursive=True)
        if self.is_local:
            tmp = f"{target}.tmp"
            try:
                with self.fs.open_output_stream(tmp) as f:
                    f.write(data)
            except OSError:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
            os.replace(tmp, target)
        else:
            with self.fs.open_output_stream(target) as f:
                f.write(data)

    def delete(self, rel: str) -> None:
        self.fs.delete_file(self._p(rel))

    def files(self) -> list[str]:
        """Every file under this folder, as paths relative to it ('trial/params.json')."""
        if not self.exists():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        cut = len(self.path) + 1
        return sorted(i.path[cut:] for i in infos if i.type == pafs.FileType.File)

    def glob(self, *patterns: str) -> list[str]:
        """Relative file paths matching any pattern; '*' never crosses a '/' ('*/params.json')."""
        return [f for f in self.files() if any(_match(f, p) for p in patterns)]

    @contextlib.contextmanager
    def local_copy(self, patterns: tuple[str, ...]) -> Iterator[Path]:
        """A local folder with this study's files matching `patterns`: the folder itself when it is local
        (nothing copied), else a temporary download (removed afterwards)."""
        if self.is_local:
            yield self.local_path
            return
        with tempfile.TemporaryDirectory(prefix="dcnn-study-") as tmp:
            root = Path(tmp) / self.name
            for rel in self.glob(*patterns):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                with self.fs.open_input_stream(self._p(rel)) as src, open(root / rel, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            root.mkdir(exist_ok=True)
            yield root

    def upload(self, local_dir: Path, rel: str) -> None:
        """Copy a local folder's files to `rel` under this folder (a no-op when that is the same folder)."""
        target = self._p(rel)
        if self.is_local and Path(local_dir).resolve() == Path(target).resolve():
            return
        self.fs.create_dir(target, recursive=True)
        pafs.copy_files(str(local_dir), target, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)

    # -- checks before Ray starts -------------------------------------------------------------------
    def check_writable(self) -> None:
        """The folder can hold a study: a writable local folder with room, or a reachable store where
        this machine's credentials may write.  Nothing is left behind."""
        flag = self.flag
        if self.is_local:
            _check_local(Path(self.path), flag)
            return
        if self.scheme == "s3":
            _check_credentials(flag, self.uri)
        probe_fs = _fail_fast(self.fs)
        top = self.path.split("/", 1)[0]  # the bucket, for stores whose paths start with one
        try:
            if top and probe_fs.get_file_info(top).type == pafs.FileType.NotFound:
                raise ValueError(f"{flag} {self.uri}: the bucket {top!r} does not exist at "
                                 f"{_endpoint(self.fs)}; create it first or fix the URI (or the endpoint, "
                                 f"AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
            probe = f"{self.path}/.dcnn-write-probe-{uuid.uuid4().hex}"
            with probe_fs.open_output_stream(probe) as f:
                f.write(b"probe")
            probe_fs.delete_file(probe)
        except OSError as e:
            raise ValueError(f"{flag} {self.uri}: cannot write there ({_first_line(e)}); check the endpoint "
                             f"({_endpoint(self.fs)}; AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL), the bucket "
                             f"name and that this machine's credentials may write to it") from None

    def worker_env(self) -> dict:
        """Non-secret SDK settings the trials' workers need to reach the same store (Ray runtime_env)."""
        return {} if self.is_local else {k: os.environ[k] for k in WORKER_ENV if os.environ.get(k)}


# -- helpers -----------------------------------------------------------------------------------------
def _match(rel: str, pattern: str) -> bool:
    a, b = rel.split("/"), pattern.split("/")
    return len(a) == len(b) and all(fnmatch.fnmatchcase(x, y) for x, y in zip(a, b))


def _fsspec(text: str, flag: str, arrow_error: Exception):
    """URIs pyarrow does not know natively (gs:// without pyarrow's GCS, memory://, ...) through fsspec."""
    try:
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        fs, path = fsspec.core.url_to_fs(text)
    except (ImportError, ValueError) as e:
        raise ValueError(f"{flag} {text!r}: no file system for this URI ({arrow_error}; fsspec: {e}); use an "
                         f"absolute folder or s3://BUCKET/PREFIX") from None
    return PyFileSystem(FSSpecHandler(fs)), path.rstrip("/")


def _known_schemes() -> set:
    schemes = {"s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"}  # pyarrow's own file systems
    try:
        from fsspec.registry import known_implementations

        schemes |= set(known_implementations)
    except ImportError:
        pass
    return schemes


def _endpoint(fs) -> str:
    """The endpoint an S3 file system talks to (pyarrow keeps it in its options, not as an attribute)."""
    options = {}
    if isinstance(fs, getattr(pafs, "S3FileSystem", ())):
        options = fs.__reduce__()[1][0]
    return options.get("endpoint_override") or "the provider's default endpoint"


def _fail_fast(fs):
    """The same S3 file system with a single attempt per request: a wrong endpoint fails in about a
    second instead of after the SDK's retries.  Other kinds are returned as they are."""
    if not isinstance(fs, getattr(pafs, "S3FileSystem", ())):
        return fs
    rebuild, (options,) = fs.__reduce__()
    return rebuild({**options, "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=1)})


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:400] if text else type(e).__name__


def _check_credentials(flag: str, uri: str) -> None:
    """S3 needs credentials from the standard chain (the SDKs would otherwise send unsigned requests and
    fail later, on every node)."""
    try:
        import botocore.session
    except ImportError:  # nothing to ask: the write probe still finds refused requests
        return
    try:
        creds = botocore.session.Session().get_credentials()
    except Exception as e:  # a broken profile or config file: say which
        raise ValueError(f"{flag} {uri}: AWS credentials could not be loaded ({type(e).__name__}: {e})") from None
    if creds is None or not creds.access_key:
        raise ValueError(f"{flag} {uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                         f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with ~/.aws/credentials, or run on a node "
                         f"with an instance/pod role); they are never passed as flags")


def _check_local(storage: Path, flag: str) -> None:
    """A writable folder (or one that can be created) with room for a study; nothing is created."""
    probe = storage
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"{flag} {storage}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK) or _read_only_mount(probe):
        raise ValueError(f"{flag} {storage}: {probe} is not writable (read-only file system or no "
                         f"permission); choose a writable folder")
    free = shutil.disk_usage(probe).free
    if free < MIN_FREE_BYTES:
        raise ValueError(f"{flag} {storage}: only {free / 2**20:.1f} MiB free on its disk; a study needs "
                         f"at least {MIN_FREE_BYTES / 2**20:.0f} MiB (checkpoints, results, MLflow store): "
                         f"free some space or choose another folder")


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def default_tracking_uri(storage: Path) -> str:
    """The MLflow store a study uses when none is given: sqlite beside the study folders (STORAGE/mlflow.db)."""
    return f"sqlite:///{Path(storage).resolve() / 'mlflow.db'}"
