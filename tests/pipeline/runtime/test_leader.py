"""The Redis lock that keeps one matcher per site: a second holder waits, takes over, never steals."""

from __future__ import annotations

import threading
import time

from selfreid.pipeline.runtime.leader import hold_leadership

KEY = "t:matcher:leader"


def _second_holder(client, stop: threading.Event, inside: threading.Event, seen: dict) -> threading.Thread:
    def run() -> None:
        with hold_leadership(client, KEY, stop, ttl_s=0.6, holder="second") as lead:
            seen["held"] = lead.held
            seen["value"] = client.get(KEY)
            inside.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_second_holder_waits_while_the_first_is_alive_then_takes_over(redis_client):
    stop, inside, seen = threading.Event(), threading.Event(), {}
    with hold_leadership(redis_client, KEY, stop, ttl_s=0.6, holder="first") as first:
        assert first.held and redis_client.get(KEY) == b"first"
        thread = _second_holder(redis_client, stop, inside, seen)
        time.sleep(1.5)  # longer than two TTLs: only the first holder's renewals keep the key
        assert not inside.is_set() and first.held and redis_client.get(KEY) == b"first"
    assert inside.wait(10), "the second holder did not take over after the first released the lock"
    thread.join(10)
    assert seen == {"held": True, "value": b"second"}
    assert redis_client.get(KEY) is None  # released on exit


def test_a_dead_holders_lock_expires_and_is_taken_over(redis_client):
    redis_client.set(KEY, "dead", px=400)  # a holder that was killed: nobody renews its key
    stop, inside, seen = threading.Event(), threading.Event(), {}
    thread = _second_holder(redis_client, stop, inside, seen)
    assert inside.wait(10)
    thread.join(10)
    assert seen == {"held": True, "value": b"second"}


def test_a_holder_that_lost_its_lock_knows_and_does_not_delete_the_new_one(redis_client):
    stop = threading.Event()
    with hold_leadership(redis_client, KEY, stop, ttl_s=0.6, holder="first") as lead:
        redis_client.set(KEY, "other")  # e.g. the holder stalled past its TTL and another took over
        assert lead.lost.wait(10)
        assert not lead.held
    assert redis_client.get(KEY) == b"other"


def test_stop_ends_the_wait_without_the_lock(redis_client):
    redis_client.set(KEY, "first")
    stop = threading.Event()
    stop.set()
    with hold_leadership(redis_client, KEY, stop, ttl_s=0.6, holder="second") as lead:
        assert not lead.held
    assert redis_client.get(KEY) == b"first"
