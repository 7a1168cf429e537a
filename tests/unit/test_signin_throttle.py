"""Failed console sign-ins are limited per user name and per client address; successes are not counted."""

from __future__ import annotations

import time

from streamlit_app.signin_throttle import SignInThrottle


def test_a_user_name_is_held_after_its_failures_from_any_address() -> None:
    throttle = SignInThrottle(per_user=3, per_address=100, window_s=60)
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert throttle.check("ana", address) is None
        throttle.failed("ana", address)
    refusal = throttle.check(" ANA ", "10.0.0.9")  # the same name however it is typed
    assert refusal is not None and refusal.what == "user" and 1 <= refusal.retry_after_s <= 60
    assert "this user name" in refusal.message()
    assert throttle.check("bob", "10.0.0.9") is None  # another user is not held


def test_an_address_is_held_after_its_failures_for_any_user_name() -> None:
    throttle = SignInThrottle(per_user=100, per_address=4, window_s=60)
    for n in range(4):
        assert throttle.check(f"user{n}", "192.0.2.7") is None
        throttle.failed(f"user{n}", "192.0.2.7")
    refusal = throttle.check("someone-else", "192.0.2.7")
    assert refusal is not None and refusal.what == "address"
    assert throttle.check("someone-else", "192.0.2.8") is None


def test_the_window_moves_on() -> None:
    throttle = SignInThrottle(per_user=1, per_address=10, window_s=1)
    throttle.failed("ana", None)
    assert throttle.check("ana", None) is not None
    time.sleep(1.1)
    assert throttle.check("ana", None) is None
