"""The run directory: checks that touch nothing, and a lock held for the life of a run.

``check_workdir`` runs before anything is written, so a workdir that cannot be
used is reported without creating it (or anything in it). ``WorkdirLock`` is
an ``fcntl.flock`` on ``<workdir>/.lock``: a second run in the same workdir
stops at once, naming the holder's pid. The kernel drops the lock when its
holder exits, however it exits (``kill -9`` included), so a stale lock file
never blocks a new run.
"""

import errno
import fcntl
import os
import shutil

LOCK_FILE = ".lock"


class WorkdirError(OSError):
  """A workdir that cannot be used; the message is one line."""


FULL_DISK_FIX = "Free space (or raise the quota or file size limit)"


def free_there(path: str) -> str:
  """``'N MiB free there'`` for the file system holding ``path``: a failed write's context."""
  return f"{shutil.disk_usage(path).free / 2**20:.0f} MiB free there"


def check_workdir(workdir: str, *, must_exist: bool = False) -> str:
  """The absolute workdir if a run can use it; creates nothing.

  Args:
    workdir: the ``--workdir`` value (``~`` is expanded).
    must_exist: it must already be a directory (evaluation, prediction).

  Returns:
    The absolute path.

  Raises:
    WorkdirError: it is a file or a dangling symbolic link, or it (or its parent)
      cannot be written.
    FileNotFoundError: its parent (or, with ``must_exist``, itself) is missing.
  """
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.islink(path) and not os.path.exists(path):
    raise WorkdirError(f"workdir {path} is a symbolic link to {os.readlink(path)}, which does not "
                       "exist; create that directory or choose another --workdir.")
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise WorkdirError(f"workdir {path} is a file, not a directory; choose another --workdir.")
    if not must_exist and not os.access(path, os.W_OK | os.X_OK):
      raise WorkdirError(f"workdir {path} cannot be written (no write permission); fix its "
                         "permissions or choose another --workdir.")
    return path
  if must_exist:
    raise FileNotFoundError(f"workdir {path} does not exist; train first with --mode=train "
                            f"--workdir={workdir}.")
  parent = os.path.dirname(path)
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"the parent of workdir {path} does not exist; create {parent} "
                            "first or choose another --workdir.")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise WorkdirError(f"cannot create workdir {path}: {parent} is not writable; choose "
                       "another --workdir.")
  return path


def create_workdir(path: str) -> None:
  """``mkdir -p``, reporting failure (read-only file system, ...) in one line."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"cannot create workdir {path}: {e.strerror}; choose another "
                       "--workdir.") from None


def check_unlocked(path: str) -> None:
  """Raises ``WorkdirError`` now if another run holds the workdir's lock.

  An early, read-only probe (it never creates the lock file), so that a busy
  workdir is reported before any slow start-up; ``WorkdirLock`` decides. Not
  for multi-process runs, whose processes would take turns holding the lock.
  """
  try:
    fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDONLY)
  except OSError:
    return  # no lock file: nobody holds it; unreadable: WorkdirLock reports it
  try:
    WorkdirLock.try_lock(fd, os.path.join(path, LOCK_FILE))
    fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


class WorkdirLock:
  """Exclusive lock of a workdir, as a context manager.

  Args:
    workdir: an existing directory.

  Raises (on entry):
    WorkdirError: another process holds the lock, or the lock file cannot
      be opened.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd = None

  def acquire(self) -> None:
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f"cannot open the lock file {self.path}: {e.strerror}; check the "
                         "workdir's permissions or choose another --workdir.") from None
    try:
      self.try_lock(fd, self.path)
    except WorkdirError:
      os.close(fd)
      raise
    # Written only once the lock is ours, so a refused run changes nothing.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    self._fd = fd

  @staticmethod
  def try_lock(fd: int, path: str) -> None:
    """``flock`` without waiting; ``WorkdirError`` naming the holder's pid if busy."""
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise WorkdirError(f"cannot lock {path}: {e.strerror}.") from None
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
      raise WorkdirError(
          f"workdir {os.path.dirname(path)} is in use by another run (pid {holder}); wait for "
          "it to end, stop it, or choose another --workdir.") from None

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
