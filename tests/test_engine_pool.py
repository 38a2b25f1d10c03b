"""The engines' stream pool: the all-core solo stream serves a lone request and never runs beside the
per-stream ones (more threads than cores), while loaded callers share the per-stream objects."""

from __future__ import annotations

import threading
import time

from hazardlens.models.engines import _Pool


def test_a_lone_call_gets_the_solo_stream_every_time() -> None:
    pool = _Pool(["a", "b"], solo="solo")
    for _ in range(3):
        with pool.take() as item:
            assert item == "solo"


def test_without_a_solo_stream_calls_share_the_streams() -> None:
    pool = _Pool(["a"])
    with pool.take() as item:
        assert item == "a"


def test_under_load_the_solo_stream_never_runs_beside_another() -> None:
    pool = _Pool(["a", "b"], solo="solo")
    lock = threading.Lock()
    running: list[str] = []
    seen: list[tuple[str, ...]] = []
    used: list[str] = []

    def call() -> None:
        with pool.take() as item:
            with lock:
                running.append(item)
                seen.append(tuple(running))
                used.append(item)
            time.sleep(0.02)
            with lock:
                running.remove(item)

    threads = [threading.Thread(target=call) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    # whatever ran at one moment: the solo stream alone, or per-stream objects (never the same one twice)
    for moment in seen:
        assert ("solo" not in moment or moment == ("solo",)) and len(set(moment)) == len(moment)
    assert max(len(m) for m in seen) == 2  # the load did run two streams side by side
    assert {"a", "b"} <= set(used)
    with pool.take() as item:  # the load is over: a lone call is back on every core
        assert item == "solo"


def test_a_caller_waiting_behind_the_solo_stream_gets_a_per_stream_object_next() -> None:
    pool = _Pool(["a", "b"], solo="solo")
    got: list[str] = []

    def second() -> None:
        with pool.take() as item:
            got.append(item)

    with pool.take() as first:
        assert first == "solo"
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.1)
        assert not got  # it waits: it must not start a 1-thread stream beside the all-core one
    waiter.join(timeout=5)
    assert got and got[0] in {"a", "b"}
