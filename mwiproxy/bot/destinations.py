"""The `directory` destination: writes a bundle of credential files atomically.

Layout (for a destination `/opt/machine-id`)::

    /opt/machine-id/                  0700, re-applied on every write
      .write-test                     empty probe, 0600 (tbot writes one too)
      key      -> .bundles/current/key
      tlscert  -> .bundles/current/tlscert
      cockroach/                      a real directory, 0700
        node.crt -> ../.bundles/current/cockroach/node.crt
      .bundles/                       0700
        .lock                         serialises writers (flock)
        current -> 42                 the one switch point
        41/                           previous version, kept until the next write
        42/                           files 0600, subdirectories 0700

Every Teleport-compatible name (`key`, `tlscert`, `cockroach/node.crt`, ...) is a real
path clients open: a symlink that resolves through `.bundles/current`.

Guarantees a reader gets:

1. **No partial file, ever.** Files are written into a fresh hidden directory, fsync'd,
   and published by renames; a published file is never modified again, only unlinked
   when its version is pruned. An open file descriptor keeps reading the content it
   opened.
2. **One switch point.** Every name moves to the new version at one instant: the
   rename of the `current` symlink. Names new to the bundle are linked (dangling, so
   absent to readers) before that instant and so also appear at it. A reader opening
   `key` and then `tlscert` by name gets a matching pair unless the switch falls
   between its two opens; in that case what it sees is always an *older* `key` with a
   *newer* `tlscert`, never the reverse nor a mix of two switches in between. No
   layout of independent names can do better for two independent open() calls.
3. **Consistent reads for cooperating readers.** A reader that pins a version first -
   `identity/bundle.py`'s `read_bundle()`, or by hand: `v = readlink(".bundles/current")`, then open
   `.bundles/<v>/key` and `.bundles/<v>/tlscert` - always gets a matching pair: a
   version's files never change, and the previous version stays on disk until the next
   write, so a reader has one full renewal interval to finish; if it is slower, it gets
   ENOENT (never a mismatch) and retries. A reader that needs no retry loop can use the
   single-file `identity` (key and certificate in one file).
4. **Durable.** Files, bundle directories, `.bundles` and the destination are fsync'd in
   order, so after a crash `current` names a complete version.

Permissions: files are created 0600 and directories 0700; the destination, `.bundles`,
published subdirectories, `.write-test`, the new bundle and the kept previous bundle are
chmod'ed on every write, so a manual chmod is undone by the next write. `stat()` of a
published name follows its link and reports the 0600 of the real file.

Symlink policy (`symlinks:`) applies to the *user's* path to the destination:
- `secure`: every component of the path is opened with O_NOFOLLOW, one directory at a
  time from `/`; a symlink anywhere in it is refused with an error naming it.
- `try-secure` (default): the same where the platform can open that way (O_NOFOLLOW and
  directory file descriptors); elsewhere it warns and behaves like `insecure`.
- `insecure`: the path is resolved normally, symlinks followed.
Inside the destination mwibot owns the names and never follows a link when writing, in
any mode: the published links are created by mwibot, and are replaced (rename over)
rather than written through, so they do not conflict with `secure`. A pre-existing file
or foreign link at a published name (e.g. left by tbot) is replaced by rename after the
switch; from the second write on the guarantees above hold for every name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Iterator, Mapping

from mwiproxy.identity.bundle import (
    BUNDLES_DIR,
    CURRENT_LINK,
    WRITE_TEST,
    BundleError,
)

log = logging.getLogger(__name__)

SYMLINKS_SECURE = "secure"
SYMLINKS_TRY_SECURE = "try-secure"
SYMLINKS_INSECURE = "insecure"
SYMLINK_POLICIES = (SYMLINKS_SECURE, SYMLINKS_TRY_SECURE, SYMLINKS_INSECURE)

LOCK_FILE = ".lock"
FILE_MODE = 0o600
DIR_MODE = 0o700

_TMP_PREFIX = ".tmp-"
_CURRENT_TMP = ".current.tmp"
_RESERVED = frozenset({BUNDLES_DIR, WRITE_TEST})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class DestinationError(BundleError):
    """A destination cannot be written; the message says why, for the operator."""


class DirectoryDestination:
    def __init__(self, path: str, symlinks: str = SYMLINKS_TRY_SECURE) -> None:
        if symlinks not in SYMLINK_POLICIES:
            raise ValueError(f"symlinks: {symlinks!r} is not one of {', '.join(SYMLINK_POLICIES)}")
        self.path = os.path.abspath(path)
        self.symlinks = symlinks

    def __repr__(self) -> str:
        return f"DirectoryDestination({self.path!r}, symlinks={self.symlinks!r})"

    def write_bundle(self, files: Mapping[str, bytes]) -> int:
        """Publish `files` (relative name -> content) as one version; return its number."""
        names = sorted(files)
        for name in names:
            _check_name(name)
        with contextlib.ExitStack() as stack:
            root = _closing(stack, self._open_root())
            _chmod_dir(root, self.path)
            bundles = _closing(stack, _ensure_dir(root, BUNDLES_DIR))
            stack.enter_context(_locked(bundles))
            _write_probe(root)
            return _publish(root, bundles, files, names)

    def open_root(self) -> int:
        """A directory fd on the destination (made 0700 when missing), per `symlinks`."""
        return self._open_root()

    def current_version(self) -> int | None:
        try:
            return int(os.readlink(os.path.join(self.path, BUNDLES_DIR, CURRENT_LINK)))
        except FileNotFoundError:
            return None

    def _open_root(self) -> int:
        if self.symlinks == SYMLINKS_INSECURE:
            return _open_following(self.path)
        if _nofollow_supported():
            return _open_nofollow(self.path)
        if self.symlinks == SYMLINKS_SECURE:
            raise DestinationError(
                f"{self.path}: symlinks: secure is not possible on this platform "
                "(no O_NOFOLLOW directory opening); use try-secure or insecure"
            )
        log.warning("%s: cannot refuse symlinks on this platform; writing insecurely", self.path)
        return _open_following(self.path)


# --- publishing a version -------------------------------------------------------------


def _publish(root: int, bundles: int, files: Mapping[str, bytes], names: list[str]) -> int:
    previous = _current(bundles)
    version = max(_versions(bundles), default=0) + 1
    _write_version(bundles, version, files, names)
    repairs = _link_missing(root, names)
    _switch(bundles, version)
    for name in repairs:
        _link(root, name)
    if previous is not None:
        _unlink_dropped(root, bundles, previous, set(names))
        _reapply_modes(bundles, str(previous))
    os.fsync(root)
    _prune(bundles, keep={version, previous})
    return version


def _write_version(
    bundles: int, version: int, files: Mapping[str, bytes], names: list[str]
) -> None:
    tmp = f"{_TMP_PREFIX}{version}-{secrets.token_hex(4)}"
    with _removed_on_error(bundles, tmp), contextlib.ExitStack() as stack:
        top = _closing(stack, _ensure_dir(bundles, tmp))
        for name in names:
            with _parent_of(top, name) as parent:
                write_new_file(parent, _leaf(name), files[name])
                os.fsync(parent)
        os.fsync(top)
    os.rename(tmp, str(version), src_dir_fd=bundles, dst_dir_fd=bundles)
    os.fsync(bundles)


def _switch(bundles: int, version: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_CURRENT_TMP, dir_fd=bundles)
    os.symlink(str(version), _CURRENT_TMP, dir_fd=bundles)
    os.replace(_CURRENT_TMP, CURRENT_LINK, src_dir_fd=bundles, dst_dir_fd=bundles)
    os.fsync(bundles)


def _link_missing(root: int, names: list[str]) -> list[str]:
    """Create links for absent names now; return names whose entry must be replaced later."""
    repairs = []
    for name in names:
        state = _link_state(root, name)
        if state == "missing":
            _link(root, name)
        elif state == "wrong":
            repairs.append(name)
    return repairs


def _link_state(root: int, name: str) -> str:
    with _parent_of(root, name) as parent:
        try:
            target = os.readlink(_leaf(name), dir_fd=parent)
        except FileNotFoundError:
            return "missing"
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            return "wrong"
        return "ok" if target == _link_target(name) else "wrong"


def _link(root: int, name: str) -> None:
    leaf = _leaf(name)
    tmp = f".{leaf}.{secrets.token_hex(4)}.tmp"
    with _parent_of(root, name) as parent:
        os.symlink(_link_target(name), tmp, dir_fd=parent)
        try:
            os.replace(tmp, leaf, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError as e:
            os.unlink(tmp, dir_fd=parent)
            raise DestinationError(f"cannot publish {name!r}: {e.strerror}") from e
        os.fsync(parent)


def _unlink_dropped(root: int, bundles: int, previous: int, kept: set[str]) -> None:
    """Remove our links for names the previous version had and this one does not."""
    for name in _files_of(bundles, str(previous)):
        if name in kept or _link_state(root, name) != "ok":
            continue
        with _parent_of(root, name) as parent:
            os.unlink(_leaf(name), dir_fd=parent)


def _reapply_modes(bundles: int, version: str) -> None:
    """The kept previous version stays readable: undo any chmod made to it since."""
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(version, _DIR_FLAGS | _NOFOLLOW, dir_fd=bundles)
        try:
            for _top, _dirs, files, dir_fd in os.fwalk(dir_fd=fd):
                _chmod_dir(dir_fd, version)
                for name in files:
                    _chmod_file(dir_fd, name)
        finally:
            os.close(fd)


def _chmod_file(dir_fd: int, name: str) -> None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | _NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return  # not ours (a link planted here): pruning removes it with the version
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _prune(bundles: int, keep: set[int | None]) -> None:
    kept = {str(v) for v in keep if v is not None} | {CURRENT_LINK, LOCK_FILE}
    for entry in os.listdir(bundles):
        if entry not in kept:
            _remove(bundles, entry)


@contextlib.contextmanager
def _removed_on_error(dir_fd: int, name: str) -> Iterator[None]:
    """A version half written when a write fails (a full disk) is removed at once: each
    retry would otherwise leave one more behind, on the disk that has no room."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(dir_fd, name)
        raise


def _remove(dir_fd: int, name: str) -> None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


# --- opening the user's path -----------------------------------------------------------


def _nofollow_supported() -> bool:
    return bool(_NOFOLLOW) and os.open in os.supports_dir_fd and os.mkdir in os.supports_dir_fd


def _open_following(path: str) -> int:
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    return os.open(path, _DIR_FLAGS)


def _open_nofollow(path: str) -> int:
    """Open `path` one component at a time from `/`, refusing any symlink on the way."""
    fd = os.open("/", _DIR_FLAGS)
    walked = ""
    try:
        for part in [p for p in path.split("/") if p]:
            walked += "/" + part
            child = _open_component(fd, part, walked, path)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_component(parent: int, part: str, walked: str, path: str) -> int:
    try:
        return os.open(part, _DIR_FLAGS | _NOFOLLOW, dir_fd=parent)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, DIR_MODE, dir_fd=parent)
        return os.open(part, _DIR_FLAGS | _NOFOLLOW, dir_fd=parent)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(parent, part):
            raise DestinationError(
                f"{path}: refusing to write through a symlink ({walked} is a symlink); "
                "use the real path, or set symlinks: insecure"
            ) from e
        raise


# --- small filesystem helpers ----------------------------------------------------------


def _check_name(name: str) -> None:
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts) or parts[0] in _RESERVED:
        raise ValueError(f"invalid output file name {name!r}")


def _leaf(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _link_target(name: str) -> str:
    return "../" * name.count("/") + f"{BUNDLES_DIR}/{CURRENT_LINK}/{name}"


@contextlib.contextmanager
def _parent_of(root: int, name: str) -> Iterator[int]:
    fd = _ensure_parents(root, name)
    try:
        yield fd
    finally:
        if fd != root:
            os.close(fd)


def _ensure_parents(top: int, name: str) -> int:
    """Directory fd holding `name`'s leaf (0700 directories created as needed)."""
    fd = top
    for part in name.split("/")[:-1]:
        child = _ensure_dir(fd, part)
        if fd != top:
            os.close(fd)
        fd = child
    return fd


def _ensure_dir(parent: int, name: str) -> int:
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, DIR_MODE, dir_fd=parent)
    try:
        fd = os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=parent)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise DestinationError(f"{name!r} inside the destination is not a directory") from e
        raise
    _chmod_dir(fd, name)
    return fd


def _chmod_dir(fd: int, label: str) -> None:
    try:
        os.fchmod(fd, DIR_MODE)
    except PermissionError:
        log.warning("%s: cannot set mode 0700 (not the owner)", label)


def write_new_file(dir_fd: int, name: str, data: bytes) -> None:
    """Create `name` (0600, must not exist, no symlink followed) with `data`, fsync'd."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _NOFOLLOW
    fd = os.open(name, flags, FILE_MODE, dir_fd=dir_fd)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_probe(root: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | _NOFOLLOW
    try:
        fd = os.open(WRITE_TEST, flags, FILE_MODE, dir_fd=root)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        os.unlink(WRITE_TEST, dir_fd=root)
        fd = os.open(WRITE_TEST, flags, FILE_MODE, dir_fd=root)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _current(bundles: int) -> int | None:
    try:
        return int(os.readlink(CURRENT_LINK, dir_fd=bundles))
    except (FileNotFoundError, ValueError):
        return None


def _versions(bundles: int) -> Iterator[int]:
    return (int(e) for e in os.listdir(bundles) if e.isdigit())


def _files_of(bundles: int, version: str) -> list[str]:
    """Relative names of the regular files in one version (walked without following links)."""
    out: list[str] = []
    fd = os.open(version, _DIR_FLAGS | _NOFOLLOW, dir_fd=bundles)
    try:
        for top, _dirs, files, _fd in os.fwalk(dir_fd=fd):
            prefix = "" if top == "." else top[2:] + "/"
            out.extend(prefix + f for f in files)
    finally:
        os.close(fd)
    return out


def _closing(stack: contextlib.ExitStack, fd: int) -> int:
    stack.callback(os.close, fd)
    return fd


@contextlib.contextmanager
def _locked(bundles: int) -> Iterator[None]:
    fd = os.open(
        LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | _NOFOLLOW, FILE_MODE, dir_fd=bundles
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False
