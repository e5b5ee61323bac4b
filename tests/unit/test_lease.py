"""The run lease (i2score.runs.lease) and the exclusive create under it: one active attempt per run
id, taken over after expiry, raced by threads and processes on a local folder and memory://."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from i2score.data import storage
from i2score.runs import lease as leases
from i2score.runs.lease import LeaseLostError, LeaseSettings, RunActiveError, RunLease

REPO = Path(__file__).resolve().parents[2]
SHORT = LeaseSettings(ttl_s=10.0, renew_s=2.0, poll_s=0.05)


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    url = f"memory://lease-{uuid.uuid4().hex}"
    yield url
    import fsspec

    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def test_create_exclusive_refuses_an_existing_object_and_keeps_it(root):
    url = storage.join(root, "x", "obj.json")
    storage.create_exclusive(url, b"first")
    with pytest.raises(FileExistsError):
        storage.create_exclusive(url, b"second")
    assert storage.read_bytes(url) == b"first"
    # No temp file is left next to it.
    assert storage.list_files(storage.join(root, "x")) == [url]


def race_to_create(url: str, writers: int) -> list[int]:
    """``writers`` threads released together, each trying to create ``url`` holding its number;
    returns the numbers of those that succeeded (after checking the object holds the winner's)."""
    start = threading.Barrier(writers)
    won: list[int] = []

    def take(i: int) -> None:
        start.wait()
        try:
            storage.create_exclusive(url, str(i).encode())
            won.append(i)
        except FileExistsError:
            pass

    threads = [threading.Thread(target=take, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if won:
        assert storage.read_bytes(url) == str(won[0]).encode()
    return won


def acquire_together(takers: list[RunLease]) -> list[str]:
    """Each lease tries to acquire at the same moment (threads behind a barrier): ``won`` or
    ``active`` per taker, in the order they finished."""
    start = threading.Barrier(len(takers))
    results: list[str] = []

    def take(t: RunLease) -> None:
        start.wait()
        try:
            t.try_acquire()
            results.append("won")
        except RunActiveError:
            results.append("active")

    threads = [threading.Thread(target=take, args=(t,)) for t in takers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results


def test_threads_racing_to_create_one_object_exactly_one_wins(root):
    assert len(race_to_create(storage.join(root, "race", "00000001.json"), 16)) == 1


def test_a_held_lease_refuses_a_second_attempt_with_its_owner(root):
    clock = Clock()
    first = RunLease(root, "reconstruct-abc", SHORT, clock=clock)
    rec = first.try_acquire()
    assert rec.generation == 1 and rec.attempt == first.attempt and rec.pid == os.getpid()
    with pytest.raises(RunActiveError) as e:
        RunLease(root, "reconstruct-abc", SHORT, clock=clock).try_acquire()
    assert str(e.value) == (f"run reconstruct-abc is active (owner {rec.host}:{rec.pid}, since "
                            "2023-11-14T22:13:20Z)")
    # Another run id is independent.
    assert RunLease(root, "reconstruct-other", SHORT, clock=clock).try_acquire().generation == 1


def test_a_released_lease_is_taken_at_once_by_the_next_generation(root):
    clock = Clock()
    first = RunLease(root, "r", SHORT, clock=clock)
    first.try_acquire()
    first.release()
    assert leases.newest_lease(root, "r").released  # type: ignore[union-attr]
    second = RunLease(root, "r", SHORT, clock=clock)
    assert second.try_acquire().generation == 2
    assert leases.newest_lease(root, "r").attempt == second.attempt  # type: ignore[union-attr]


def test_an_expired_lease_is_taken_over_and_its_owner_finds_out(root):
    clock = Clock()
    first = RunLease(root, "r", SHORT, clock=clock)
    first.try_acquire()
    clock.t += SHORT.ttl_s - 0.01
    with pytest.raises(RunActiveError):
        RunLease(root, "r", SHORT, clock=clock).try_acquire()
    clock.t += 0.02  # expired: the owner stopped renewing (SIGKILL, a stalled machine)
    second = RunLease(root, "r", SHORT, clock=clock)
    assert second.try_acquire().generation == 2
    # The stalled owner wakes up: its renewal and its check see the newer generation.
    with pytest.raises(LeaseLostError):
        first.renew()
    with pytest.raises(LeaseLostError):
        first.check()
    first.release()  # a lost lease is left alone
    assert leases.newest_lease(root, "r").attempt == second.attempt  # type: ignore[union-attr]
    assert not leases.newest_lease(root, "r").released  # type: ignore[union-attr]
    # Batches of the lost attempt are refused, the new owner's pass.
    leases.check_current(root, "r", 2, second.attempt)
    with pytest.raises(LeaseLostError):
        leases.check_current(root, "r", 1, first.attempt)


def test_renewal_pushes_the_expiry_forward(root):
    clock = Clock()
    held = RunLease(root, "r", SHORT, clock=clock)
    held.try_acquire()
    clock.t += SHORT.ttl_s * 0.9
    held.renew()
    clock.t += SHORT.ttl_s * 0.9  # past the first expiry, within the renewed one
    with pytest.raises(RunActiveError):
        RunLease(root, "r", SHORT, clock=clock).try_acquire()


def test_two_takers_of_an_expired_lease_exactly_one_wins(root):
    clock = Clock()
    RunLease(root, "r", SHORT, clock=clock).try_acquire()
    clock.t += SHORT.ttl_s + 1
    takers = [RunLease(root, "r", SHORT, clock=clock) for _ in range(8)]
    assert sorted(acquire_together(takers)) == ["active"] * 7 + ["won"]
    newest = leases.newest_lease(root, "r")
    assert newest is not None and newest.generation == 2
    assert [t.attempt for t in takers if t.record is not None] == [newest.attempt]


def test_a_retried_create_whose_answer_was_lost_still_holds_the_lease(root, monkeypatch):
    # The first PUT landed but its answer was lost; the storage layer's retry then finds the
    # object: create_exclusive raises FileExistsError although the object holds our token.
    real = storage.create_exclusive

    def landed_then_retried(url: str, data: bytes) -> None:
        real(url, data)
        raise FileExistsError(url)

    monkeypatch.setattr(leases.storage, "create_exclusive", landed_then_retried)
    mine = RunLease(root, "r", SHORT, clock=Clock())
    assert mine.try_acquire().generation == 1
    assert leases.newest_lease(root, "r").attempt == mine.attempt  # type: ignore[union-attr]


def test_hold_renews_in_the_background_and_a_waiter_gets_the_lease_after_release(root):
    settings = LeaseSettings(ttl_s=0.6, renew_s=0.1, poll_s=0.05)
    waited: list[RunActiveError] = []
    with leases.hold(root, "r", settings=settings) as held:
        time.sleep(1.2)  # twice the TTL: only renewals keep it
        with pytest.raises(RunActiveError):
            RunLease(root, "r", settings).try_acquire()
        releaser = threading.Timer(0.3, held.release)
        releaser.start()
        second = RunLease(root, "r", settings)
        rec = second.acquire(wait=True, timeout_s=10, on_wait=waited.append)
        releaser.join()
    assert rec.generation == 2 and waited and waited[0].holder.attempt == held.attempt
    second.release()


def test_a_waiter_takes_over_once_the_holder_expires(root):
    settings = LeaseSettings(ttl_s=0.5, renew_s=0.1, poll_s=0.05)
    RunLease(root, "r", settings).try_acquire()  # never renewed: a killed owner
    t0 = time.monotonic()
    rec = RunLease(root, "r", settings).acquire(wait=True, timeout_s=10)
    assert rec.generation == 2 and 0.3 < time.monotonic() - t0 < 5


def test_waiting_gives_up_after_its_timeout():
    settings = LeaseSettings(ttl_s=60, renew_s=10, poll_s=0.05)
    root = f"memory://lease-{uuid.uuid4().hex}"
    RunLease(root, "r", settings).try_acquire()
    with pytest.raises(RunActiveError):
        RunLease(root, "r", settings).acquire(wait=True, timeout_s=0.3)


def test_settings_from_the_environment(monkeypatch):
    for name in (leases.ENV_TTL, leases.ENV_RENEW, leases.ENV_POLL):
        monkeypatch.delenv(name, raising=False)
    assert LeaseSettings.from_env() == LeaseSettings(120.0, 30.0, 5.0)
    monkeypatch.setenv(leases.ENV_TTL, "8")
    assert LeaseSettings.from_env() == LeaseSettings(8.0, 2.0, 2.0)
    monkeypatch.setenv(leases.ENV_RENEW, "9")
    with pytest.raises(ValueError, match="more often"):
        LeaseSettings.from_env()
    monkeypatch.setenv(leases.ENV_RENEW, "x")
    with pytest.raises(ValueError, match="I2S_LEASE_RENEW_S"):
        LeaseSettings.from_env()


_TAKER = """
import sys, time
from i2score.runs.lease import LeaseSettings, RunActiveError, RunLease
root, start = sys.argv[1], float(sys.argv[2])
lease = RunLease(root, "raced", LeaseSettings(ttl_s=60, renew_s=10, poll_s=1))
time.sleep(max(0.0, start - time.time()))
try:
    lease.try_acquire()
    print("won", lease.attempt)
except RunActiveError as e:
    print("active", e.holder.attempt)
"""


def test_processes_racing_for_a_local_lease_exactly_one_wins(tmp_path):
    root = str(tmp_path / "store")
    start = time.time() + 3.0  # every process imported and waiting by then
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _TAKER, root, str(start)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    winners = [o[1] for o in outs if o[0] == "won"]
    assert len(winners) == 1, outs
    # The losers name the winner as the holder (or, if they looked a moment earlier, saw none and lost the create).
    assert {o[1] for o in outs if o[0] == "active"} <= {winners[0]}
    assert leases.newest_lease(root, "raced").attempt == winners[0]  # type: ignore[union-attr]
