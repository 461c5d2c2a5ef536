"""One run per workdir: an exclusive lease, WORKDIR/lease.json, that its holder keeps renewing.

    with workdir_lease.hold(workdir, needed=True):  # UserError naming the holder when in use
      ...
      workdir_lease.check_held()  # Before each checkpoint: UserError once another run took over.

The file holds {'host', 'pid', 'started', 'token', 'renewed'} (times in seconds since the epoch).
The holder rewrites `renewed` every RENEW_SECONDS from a daemon thread and deletes the file when
the run ends (normally, by an error or by preemption). A lease is stale, and the next run takes
it over with a warning naming the old holder, when it has not been renewed for STALE_SECONDS
(its holder was killed or preempted, on this host or another), or at once when its holder ran
on this host and its pid is gone (a rerun right after a crash or SIGKILL resumes at once).

Atomicity. On a local disk a lease is created by linking a complete temporary file to
lease.json (os.link fails when the file exists), and a stale lease is replaced (os.replace, so
the file is never absent) only by the contender that created lease.json.takeover-DIGEST of that
stale record exclusively (O_EXCL) and then still finds that record: of several runs started
together exactly one wins. gs:// (etils.epath has no exclusive create): a contender writes its
lease, waits SETTLE_SECONDS and reads it back; it holds the lease only when its token is still
there. Residual races: two gs:// contenders whose read and write lie more than SETTLE_SECONDS
apart can both hold it; and a holder that renews or releases its lease just as it is taken over
(possible only once it has gone stale) can overwrite the new holder's file or let a third run
create one. In both cases a renewal of the loser then finds another token, and its next
checkpoint save stops it before it writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import uuid

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from semi_ssl.errors import UserError

LEASE_FILE = 'lease.json'
RENEW_SECONDS = 30.0
STALE_SECONDS = 300.0  # Not renewed for this long: the holder is gone; the next run takes over.
SETTLE_SECONDS = 2.0  # gs://: how long a contender waits before reading its lease back.
_ATTEMPTS = 5  # Contenders that keep replacing each other: give up after this many.
_CLAIM_SECONDS = 10.0  # A takeover claim older than this was left by a contender that died.
_MESSAGE_BYTES = 4096  # A message from process 0 to the others, UTF-8, zero-padded.


def new_record(token: str, now: float) -> dict:
  """The lease of this process: {'host', 'pid', 'started', 'token', 'renewed'}."""
  return {
    'host': socket.gethostname(),
    'pid': os.getpid(),
    'started': now,
    'token': token,
    'renewed': now,
  }


def describe(record: dict, now: float) -> str:
  """'host H, pid P, started 2025-01-31 12:00:00, last renewed 12 s ago' of a lease record."""
  started = record.get('started')
  started = time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(started)) if started else '?'
  renewed = record.get('renewed')
  age = f'{now - renewed:.0f} s ago' if renewed is not None else 'never'
  return (
    f'host {record.get("host", "?")}, pid {record.get("pid", "?")}, started {started}, '
    f'last renewed {age}'
  )


def claim_name(stale: dict) -> str:
  """'lease.json.takeover-DIGEST': the file whose creator may replace the lease `stale`."""
  digest = hashlib.sha1(json.dumps(stale, sort_keys=True).encode()).hexdigest()[:16]
  return f'{LEASE_FILE}.takeover-{digest}'


def pid_alive(pid: int) -> bool:
  """Whether a process `pid` exists on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process.
    return True
  return True


def stale_reason(record: dict, now: float, stale_seconds: float) -> str | None:
  """Why the lease `record` may be taken over, or None while its holder may be alive."""
  if 'renewed' not in record:
    return 'left an unreadable lease'
  pid = record.get('pid')
  if (
    record.get('host') == socket.gethostname()
    and isinstance(pid, int)
    and pid > 0
    and not pid_alive(pid)
  ):
    return 'is no longer running'
  if now - record['renewed'] > stale_seconds:
    return f'has not renewed it for {now - record["renewed"]:.0f} s'
  return None


class WorkdirLease:
  """The lease on one workdir (a local path or gs://): `acquire`, `check`, `release`, or `with`.

  Only one process of a run holds it; `hold` shares its outcome with the others.
  """

  def __init__(
    self,
    workdir: str | os.PathLike,
    *,
    stale_seconds: float = STALE_SECONDS,
    renew_seconds: float = RENEW_SECONDS,
    settle_seconds: float = SETTLE_SECONDS,
  ):
    self.workdir = os.fspath(workdir)
    self.path = epath.Path(workdir) / LEASE_FILE
    self.stale_seconds, self.renew_seconds = stale_seconds, renew_seconds
    self.settle_seconds = settle_seconds
    self.token = uuid.uuid4().hex
    self._tmp = self.path.with_name(f'{LEASE_FILE}.{self.token}.tmp')  # Local disk only.
    self.record: dict | None = None  # While held.
    self._lost: str | None = None  # The run that took it over, once seen.
    self._is_local = '://' not in self.workdir
    self._lock, self._stop = threading.Lock(), threading.Event()
    self._thread: threading.Thread | None = None

  def acquire(self) -> None:
    """Takes the lease (over a stale one, with a warning) and starts renewing it; raises
    UserError naming the holder while another run holds it."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(_ATTEMPTS):
      current, now = self._read(self.path), time.time()
      reason = stale_reason(current, now, self.stale_seconds) if current is not None else None
      if current is not None and reason is None:
        raise UserError(
          f'{self.workdir} is in use by another run ({describe(current, now)}): wait for it to '
          'finish, stop it, or use another --workdir (a lease not renewed for '
          f'{self.stale_seconds:.0f} s is taken over).'
        )
      record = new_record(self.token, time.time())
      if self._replace(current, record):
        if current is not None:
          logging.warning(
            'Took over %s from a run that %s (%s).', self.path, reason, describe(current, now)
          )
        self.record = record
        self._thread = threading.Thread(
          target=self._renew_until_stopped, daemon=True, name='workdir-lease'
        )
        self._thread.start()
        return
    raise UserError(
      f'Could not take {self.path}: other runs keep replacing it. Start one run at '
      'a time in this --workdir.'
    )

  def renew(self) -> None:
    """Writes a fresh `renewed` time, or notes the run that has taken the lease over."""
    with self._lock:
      if self.record is None or self._lost is not None:
        return
      try:
        current = self._read(self.path)
        if current is None or current.get('token') != self.token:
          self._lost = describe(current, time.time()) if current else 'its lease file was removed'
          logging.error('Another run took %s over (%s).', self.path, self._lost)
          return
        self.record = {**self.record, 'renewed': time.time()}
        self._write(self.record)
      except Exception as error:  # pylint: disable=broad-except  # Storage hiccup: retry later.
        logging.warning(
          'Could not renew %s (%s); trying again in %.0f s.', self.path, error, self.renew_seconds
        )

  def check(self) -> None:
    """Renews the lease now; raises UserError naming the new holder once another run took it."""
    self.renew()
    if self._lost is not None:
      raise UserError(
        f'Another run took {self.workdir} over ({self._lost}) after this run had not renewed '
        f'its lease for {self.stale_seconds:.0f} s: this run stops without writing, so that '
        'the two do not mix their records.'
      )

  def release(self) -> None:
    """Stops renewing and deletes the lease file if it is still this run's."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    with self._lock:
      try:
        current = self._read(self.path) if self.record is not None else None
        if current is not None and current.get('token') == self.token:
          self.path.unlink()
      except OSError as error:
        logging.warning(
          'Could not remove %s (%s): the next run takes it over once it is stale.', self.path, error
        )
      self.record = None

  def __enter__(self) -> WorkdirLease:
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def _renew_until_stopped(self) -> None:
    while not self._stop.wait(self.renew_seconds):
      self.renew()

  @staticmethod
  def _read(path: epath.Path) -> dict | None:
    """The lease record at `path`; None if there is none, {} if it cannot be parsed."""
    try:
      text = path.read_text()
    except FileNotFoundError:
      return None
    try:
      record = json.loads(text)
    except ValueError:
      return {}
    return record if isinstance(record, dict) else {}

  def _write(self, record: dict) -> None:
    """Replaces the lease file in one step (gs:// objects are written whole)."""
    if self._is_local:
      self._tmp.write_text(json.dumps(record))
      self._tmp.replace(self.path)
    else:
      self.path.write_text(json.dumps(record))

  def _replace(self, expected: dict | None, record: dict) -> bool:
    """Writes `record` as the lease if the lease is still `expected` (None: no lease); whether
    it did."""
    if not self._is_local:  # Write, let other writes land, read back.
      self.path.write_text(json.dumps(record))
      time.sleep(self.settle_seconds)
      return (self._read(self.path) or {}).get('token') == self.token
    self._tmp.write_text(json.dumps(record))
    try:
      if expected is None:
        try:
          os.link(self._tmp, self.path)  # Fails if another run created one first.
          return True
        except FileExistsError:
          return False
      with self._claim(expected):
        if self._read(self.path) == expected:
          self._tmp.replace(self.path)
          return True
        return False
    finally:
      with contextlib.suppress(FileNotFoundError):
        self._tmp.unlink()

  @contextlib.contextmanager
  def _claim(self, stale: dict):
    """Holds the one right to replace the lease `stale`: its `claim_name`, created exclusively.
    Waits while another contender holds it; removes one that stays for _CLAIM_SECONDS (its
    contender died)."""
    claim = self.path.with_name(claim_name(stale))
    deadline = time.monotonic() + _CLAIM_SECONDS
    while True:
      try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        break
      except FileExistsError:
        if time.monotonic() > deadline:
          with contextlib.suppress(FileNotFoundError):
            claim.unlink()
          deadline = time.monotonic() + _CLAIM_SECONDS
        time.sleep(0.01)
    try:
      yield
    finally:
      with contextlib.suppress(FileNotFoundError):
        claim.unlink()


_held: dict = {}  # While `hold` holds a lease: {'lease': this process's WorkdirLease or None}.


def _from_process_0(text: str) -> str:
  """`text` as process 0 has it, on every process (a collective; none with one process)."""
  data = np.zeros(_MESSAGE_BYTES, np.uint8)
  encoded = text.encode()[:_MESSAGE_BYTES]
  data[: len(encoded)] = np.frombuffer(encoded, np.uint8)
  received = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return received.tobytes().rstrip(b'\0').decode(errors='replace')


@contextlib.contextmanager
def hold(workdir: str, needed: bool, **lease_options):
  """Holds the lease on `workdir` while the block runs, if `needed` (as process 0 sees it).

  Process 0 takes the lease and tells every process the outcome: all of them raise the same
  UserError when another run holds it. Then `check_held` is a collective of all processes.
  """
  lease = WorkdirLease(workdir, **lease_options) if needed and jax.process_index() == 0 else None
  outcome = 'held' if lease else 'not needed'
  if lease:
    try:
      lease.acquire()
    except (UserError, OSError) as refused:
      outcome = (
        str(refused)
        if isinstance(refused, UserError)
        else (f'Could not write {lease.path} ({refused}): make --workdir writable, or use another.')
      )
  outcome = _from_process_0(outcome)
  if outcome == 'not needed':
    yield
    return
  if outcome != 'held':
    raise UserError(outcome)
  _held['lease'] = lease
  try:
    yield
  finally:
    _held.clear()
    if lease:
      lease.release()


def check_held() -> None:
  """Raises UserError on every process when another run has taken over the lease that `hold`
  holds; nothing outside `hold`. Call it on every process (a collective)."""
  if not _held:
    return
  lost = ''
  if _held['lease'] is not None:
    try:
      _held['lease'].check()
    except UserError as error:
      lost = str(error)
  lost = _from_process_0(lost)
  if lost:
    raise UserError(lost)
