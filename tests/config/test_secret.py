"""Secrets never show, and text that holds one, whole or in part, is blanked."""

from __future__ import annotations

import gc
import pickle
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.config import Secret, redact, secret
from exporter.config.secret import BLANK
from tests.helpers import fragments_of

KEY = "llx-Hk3vR9wq2LmZ8pXc5Tn7Bd1Gf4Js6Ya0Ue"


def test_a_secret_never_shows_itself() -> None:
    secret = Secret(KEY)
    assert KEY not in repr(secret) and KEY not in str(secret) and KEY not in f"{secret}"
    assert secret.get() == KEY
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_a_live_secret_is_blanked_whole_and_in_part() -> None:
    secret = Secret(KEY)
    assert redact(f"a {KEY} b") == f"a {BLANK} b"
    assert redact(f"phrase {KEY[3:-3]}!") == f"phrase {BLANK}!"
    assert redact(f"{KEY[:10]}...{KEY[-9:]}") == f"{BLANK}...{BLANK}"
    assert redact("nothing to hide here") == "nothing to hide here"
    assert secret.get() == KEY  # kept alive until here


def test_values_that_are_not_secrets_yet_can_be_blanked() -> None:
    assert redact("key: abcdefghijkl", ("abcdefghijkl",)) == f"key: {BLANK}"
    assert redact("short abcd here", ("abcd",)) == f"short {BLANK} here"
    assert redact("a k b", ("k",)) == "a k b"  # too short to be a key: blanking would garble


@given(st.text(max_size=40), st.integers(0, len(KEY) - 8), st.integers(8, len(KEY)), st.text())
def test_no_run_of_eight_characters_of_a_key_survives(
    before: str, start: int, length: int, after: str
) -> None:
    secret = Secret(KEY)
    text = redact(before + KEY[start : start + length] + after)
    assert fragments_of(KEY, text) == []
    assert secret.get() == KEY


def test_a_key_stays_blanked_while_any_secret_holds_it() -> None:
    # A reload builds new Secrets of the same value, and the old ones die: the key is
    # still in use, and still blanked.
    value = "llx-Yb4nM6kP8rT0wQ2eS4dF6gH8jK0lZ2xC"
    first = Secret(value)
    second = Secret(value)
    del first
    gc.collect()
    assert redact(f"echo {value}") == f"echo {BLANK}"
    del second
    gc.collect()
    assert redact(f"echo {value}") == f"echo {value}"  # no longer a key of this process


def test_a_secret_collected_while_the_index_is_built_never_freezes_the_process() -> None:
    """The garbage collector runs finalizers wherever it strikes, also while this thread
    holds the lock of the live secrets (building their index): a finalizer that took that
    lock waited for itself forever, and the exporter froze."""
    value = "llx-Qw8eR7tY6uI5oP4aS3dF2gH1jK0lZ9xC"
    frozen = threading.Event()

    def collect_inside_the_lock() -> None:
        cycle: list[object] = [Secret(value)]
        cycle.append(cycle)  # only the cyclic collector frees it
        del cycle
        with secret._lock:
            gc.collect()  # runs the Secret's finalizer here, lock held
        frozen.set()

    worker = threading.Thread(target=collect_inside_the_lock, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert frozen.is_set(), "a finalizer waited for a lock its own thread held"
    assert redact(f"echo {value}") == f"echo {value}"  # and the dead key was forgotten


def test_a_new_secret_is_never_forgotten_for_a_dead_one() -> None:
    """Secrets are numbered, not known by id(): a new one at a dead one's address stays."""
    for _ in range(200):
        dead = Secret("llx-dead-0000000000000000")
        del dead  # freed at once; its number goes to the dead list
        alive = Secret("llx-alive-111111111111111")
        assert redact("x llx-alive-111111111111111") == f"x {BLANK}"
        del alive
