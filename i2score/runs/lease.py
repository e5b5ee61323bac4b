"""The run lease: at most one active attempt per run id, across processes and machines.

A run's lease lives in its folder as generation-numbered objects::

    <root>/runs/<run-id>/lease/00000001.json    {"generation", "run_id", "attempt", "host", "pid",
    <root>/runs/<run-id>/lease/00000002.json     "acquired_at", "renewed_at", "expires_at", "released"}

- **Acquire**: read the newest generation ``g`` (none: ``g = 0``). When it is released or
  expired, *exclusively create* generation ``g + 1`` with a fresh attempt token
  (:func:`i2score.data.storage.create_exclusive`: local link, S3 ``If-None-Match: *``). Of
  several takers racing for the same generation exactly one creates it; the others find it
  held and wait or give up (:class:`RunActiveError`). A creation that reports "exists" is read
  back: when it holds our token, a retried PUT of ours had succeeded and the lease is ours.
- **Renew**: the owner rewrites its own generation with a later expiry (a background thread,
  every ``renew_s``, while the run plans, runs its batches and writes its summary). Before
  rewriting it checks that no newer generation exists; when one does (the lease expired while
  this process was stalled and another attempt took over) the lease is *lost*: renewal stops,
  :meth:`RunLease.check` raises :class:`LeaseLostError` and the batches of the lost attempt are
  refused (:func:`check_current`).
- **Release**: the owner rewrites its generation with ``released: true``; the next taker may
  create ``g + 1`` at once. A SIGKILLed owner never releases: its generation expires
  ``ttl_s`` after its last renewal and is then taken over (the new attempt resumes the run:
  finished batches are skipped).

Generations are never deleted, so the folder is also the run's attempt history.

Clocks: expiry is wall-clock time (UTC seconds) written by the owner and compared by the taker,
so the lease assumes the machines' clocks agree to well within ``ttl_s - renew_s`` (NTP keeps
them within milliseconds; the defaults leave 90 s). A taker whose clock runs ahead by more than
that can take a live lease; the owner then finds the newer generation at its next renewal and
stops. The store's own timestamps are not used: they are not readable the same way on every
fsspec backend.

Stores: the exclusive create is atomic on local folders (POSIX link) and S3 with conditional
writes (AWS; SeaweedFS honours ``If-None-Match: *``, tested in
``tests/integration/test_lease.py``). ``memory://`` is one process's store and is serialised by
a lock. On other fsspec protocols the create is fsspec's ``mode="create"``, atomic only where
that filesystem implements it.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

from i2score.data import storage

log = logging.getLogger(__name__)

#: Default lease lifetime in seconds without a renewal (env ``I2S_LEASE_TTL_S``).
LEASE_TTL_S = 120.0
#: Default seconds between renewals (env ``I2S_LEASE_RENEW_S``).
LEASE_RENEW_S = 30.0
#: Default seconds between checks of a waiting attempt (env ``I2S_LEASE_POLL_S``).
LEASE_POLL_S = 5.0

ENV_TTL = "I2S_LEASE_TTL_S"
ENV_RENEW = "I2S_LEASE_RENEW_S"
ENV_POLL = "I2S_LEASE_POLL_S"

_GENERATION_DIGITS = 8


@dataclass(frozen=True)
class LeaseSettings:
    """How long a lease lives without renewal, how often its owner renews it and how often a
    waiting attempt looks again (seconds)."""

    ttl_s: float = LEASE_TTL_S
    renew_s: float = LEASE_RENEW_S
    poll_s: float = LEASE_POLL_S

    def __post_init__(self) -> None:
        if not (self.ttl_s > 0 and self.renew_s > 0 and self.poll_s > 0):
            raise ValueError(f"lease times must be positive (ttl {self.ttl_s}, renew {self.renew_s}, "
                             f"poll {self.poll_s})")
        if self.renew_s >= self.ttl_s:
            raise ValueError(f"the lease must be renewed ({self.renew_s} s) more often than it expires "
                             f"({self.ttl_s} s)")

    @classmethod
    def from_env(cls) -> LeaseSettings:
        """The defaults, overridden by ``I2S_LEASE_TTL_S``, ``I2S_LEASE_RENEW_S`` and
        ``I2S_LEASE_POLL_S``; a renewal interval left unset follows the TTL (a quarter of it)."""
        def number(name: str) -> float | None:
            raw = os.environ.get(name, "").strip()
            if not raw:
                return None
            try:
                return float(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number of seconds") from None

        ttl, renew, poll = number(ENV_TTL), number(ENV_RENEW), number(ENV_POLL)
        ttl = LEASE_TTL_S if ttl is None else ttl
        if renew is None:
            renew = LEASE_RENEW_S if ttl == LEASE_TTL_S else ttl / 4
        if poll is None:
            poll = min(LEASE_POLL_S, ttl / 4)
        return cls(ttl, renew, poll)


@dataclass(frozen=True)
class LeaseRecord:
    """One lease generation as stored (times are UTC seconds since the epoch)."""

    generation: int
    run_id: str
    attempt: str
    host: str
    pid: int
    acquired_at: float
    renewed_at: float
    expires_at: float
    released: bool = False

    @property
    def owner(self) -> str:
        """``host:pid`` of the process that holds (or held) the lease."""
        return f"{self.host}:{self.pid}"

    def active(self, now: float) -> bool:
        """Held: neither released nor expired at ``now``."""
        return not self.released and now < self.expires_at

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord:
        d = json.loads(data)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunActiveError(RuntimeError):
    """Another attempt holds the run's lease. ``str()`` is the one line the CLI prints."""

    def __init__(self, run_id: str, holder: LeaseRecord) -> None:
        super().__init__(f"run {run_id} is active (owner {holder.owner}, since {_iso(holder.acquired_at)})")
        self.run_id = run_id
        self.holder = holder


class LeaseLostError(RuntimeError):
    """This attempt's lease was taken over by another attempt (it expired while this process was
    stalled): the attempt must stop without writing the run's summary."""


def lease_folder(root: str, run_id: str) -> str:
    """``<root>/runs/<run-id>/lease``."""
    return storage.join(root, "runs", run_id, "lease")


def _generation_of(url: str) -> int | None:
    name = storage.basename(url)
    stem = name[:-len(".json")] if name.endswith(".json") else ""
    return int(stem) if stem.isdigit() and len(stem) == _GENERATION_DIGITS else None


def newest_lease(root: str, run_id: str) -> LeaseRecord | None:
    """The newest lease generation of the run (``None`` when it never had one)."""
    folder = lease_folder(root, run_id)
    gens = sorted(g for g in map(_generation_of, storage.list_files(folder, ".json")) if g is not None)
    if not gens:
        return None
    return _read(root, run_id, gens[-1])


def _url(root: str, run_id: str, generation: int) -> str:
    return storage.join(lease_folder(root, run_id), f"{generation:0{_GENERATION_DIGITS}d}.json")


def _read(root: str, run_id: str, generation: int) -> LeaseRecord:
    return LeaseRecord.from_bytes(storage.read_bytes(_url(root, run_id, generation)))


def check_current(root: str, run_id: str, generation: int, attempt: str) -> None:
    """Raise :class:`LeaseLostError` unless generation ``generation`` held by ``attempt`` is the
    run's newest lease (what a batch checks before it computes: a fence against an attempt that
    lost its lease). A released or expired newest generation of the same attempt passes: the
    owner's renewal thread, not the batch, judges time."""
    newest = newest_lease(root, run_id)
    if newest is None or newest.generation != generation or newest.attempt != attempt:
        now_holder = f"generation {newest.generation} held by {newest.owner}" if newest else "no lease"
        raise LeaseLostError(f"run {run_id}: attempt {attempt} (lease generation {generation}) is no longer the "
                             f"run's owner ({now_holder})")


class RunLease:
    """The lease of one run held by this process: :meth:`acquire`, then renewed by a background
    thread until :meth:`release`. Use :func:`hold` for the whole sequence."""

    def __init__(self, root: str, run_id: str, settings: LeaseSettings | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.run_id = run_id
        self.settings = settings or LeaseSettings.from_env()
        self.clock = clock
        self.attempt = uuid.uuid4().hex[:12]
        self.record: LeaseRecord | None = None
        self._stop = threading.Event()
        self._lost: str | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def generation(self) -> int:
        """The generation this process holds (after :meth:`acquire`)."""
        if self.record is None:
            raise RuntimeError("the lease is not acquired")
        return self.record.generation

    def try_acquire(self) -> LeaseRecord:
        """Take the lease once: create the generation after the newest when that one is
        released or expired. Raises :class:`RunActiveError` when another attempt holds it
        (also when another taker created the same generation first)."""
        newest = newest_lease(self.root, self.run_id)
        now = self.clock()
        if newest is not None and newest.active(now):
            raise RunActiveError(self.run_id, newest)
        gen = (newest.generation if newest else 0) + 1
        mine = LeaseRecord(gen, self.run_id, self.attempt, socket.gethostname(), os.getpid(), now, now,
                           now + self.settings.ttl_s)
        try:
            storage.create_exclusive(_url(self.root, self.run_id, gen), mine.to_bytes())
        except FileExistsError:
            try:
                there = _read(self.root, self.run_id, gen)
            except FileNotFoundError:
                # 409 from S3: another conditional write of this generation is still in flight.
                there = replace(mine, attempt="(another attempt)", host="(unknown)", pid=0)
            if there.attempt != self.attempt:
                raise RunActiveError(self.run_id, there) from None
            # Our own PUT, retried after its answer was lost: the generation is ours.
        if newest is not None and not newest.released:
            log.warning("run %s: took over lease generation %d of %s (expired %s)", self.run_id, newest.generation,
                        newest.owner, _iso(newest.expires_at))
        self.record = mine
        return mine

    def acquire(self, *, wait: bool = False, timeout_s: float | None = None,
                on_wait: Callable[[RunActiveError], None] | None = None) -> LeaseRecord:
        """Take the lease. Without ``wait`` a held lease raises :class:`RunActiveError`; with it,
        poll every ``settings.poll_s`` until the holder releases it or it expires (at most
        ``timeout_s``, then :class:`RunActiveError`). ``on_wait`` is called before each wait."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                return self.try_acquire()
            except RunActiveError as e:
                if not wait or (deadline is not None and time.monotonic() >= deadline):
                    raise
                if on_wait is not None:
                    on_wait(e)
                # Wake up no later than the holder's expiry (plus a little: clocks differ).
                left = e.holder.expires_at - self.clock() + 0.05
                pause = max(0.05, min(self.settings.poll_s, left))
                if deadline is not None:
                    pause = max(0.0, min(pause, deadline - time.monotonic()))
                time.sleep(pause)

    def renew(self) -> None:
        """Push this generation's expiry ``ttl_s`` past now, unless a newer generation exists
        (then the lease is lost: :class:`LeaseLostError`)."""
        with self._lock:
            rec = self.record
            if rec is None or rec.released:
                raise RuntimeError("renewing a lease that is not held")
            self._check_newest(rec)
            now = self.clock()
            self.record = replace(rec, renewed_at=now, expires_at=now + self.settings.ttl_s)
            storage.write_bytes(_url(self.root, self.run_id, rec.generation), self.record.to_bytes())

    def _check_newest(self, rec: LeaseRecord) -> None:
        newest = newest_lease(self.root, self.run_id)
        if newest is None or newest.generation != rec.generation:
            holder = f"generation {newest.generation} of {newest.owner}" if newest else "nothing"
            self._lost = f"run {self.run_id}: lease generation {rec.generation} was taken over ({holder} is newest)"
            raise LeaseLostError(self._lost)

    def release(self) -> None:
        """Stop renewing and mark this generation released (the next attempt may start at
        once). A lost lease is left alone."""
        self._stop_renewing()
        with self._lock:
            rec = self.record
            if rec is None or rec.released or self._lost is not None:
                return
            try:
                self._check_newest(rec)
            except LeaseLostError:
                return
            self.record = replace(rec, released=True, renewed_at=self.clock())
            storage.write_bytes(_url(self.root, self.run_id, rec.generation), self.record.to_bytes())

    def check(self) -> None:
        """Raise :class:`LeaseLostError` when another attempt took the lease over; checks the
        store (not only what the renewal thread saw)."""
        if self._lost is not None:
            raise LeaseLostError(self._lost)
        rec = self.record
        if rec is None:
            raise RuntimeError("the lease is not acquired")
        with self._lock:
            self._check_newest(rec)

    def start_renewing(self) -> None:
        """Renew every ``settings.renew_s`` in a daemon thread until :meth:`release`. A failed
        renewal (a storage outage) is retried at the next tick; a lost lease ends the thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._renew_loop, name=f"i2s-lease-{self.run_id}", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.settings.renew_s):
            try:
                self.renew()
            except LeaseLostError as e:
                log.error("%s; this attempt stops", e)
                return
            except Exception as e:  # noqa: BLE001 - an outage: the next tick tries again before expiry
                log.warning("run %s: lease renewal failed (%s: %s); retrying in %.0f s", self.run_id,
                            type(e).__name__, storage.redact(str(e)), self.settings.renew_s)

    def _stop_renewing(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def lost(self) -> bool:
        """True once a renewal or check found the lease taken over."""
        return self._lost is not None


@contextmanager
def hold(root: str, run_id: str, *, wait: bool = False, settings: LeaseSettings | None = None,
         timeout_s: float | None = None, on_wait: Callable[[RunActiveError], None] | None = None,
         ) -> Iterator[RunLease]:
    """Hold the run's lease for the ``with`` block: acquire it (or raise
    :class:`RunActiveError`; with ``wait``, poll until it is free), renew it in the background,
    release it at the end, also when the block raises."""
    lease = RunLease(root, run_id, settings)
    lease.acquire(wait=wait, timeout_s=timeout_s, on_wait=on_wait)
    lease.start_renewing()
    try:
        yield lease
    finally:
        lease.release()


def describe(record: LeaseRecord) -> dict[str, Any]:
    """A lease record as a run's ``summary.json`` lists it (times as ISO strings)."""
    return {"generation": record.generation, "attempt": record.attempt, "owner": record.owner,
            "acquired_at": _iso(record.acquired_at)}
