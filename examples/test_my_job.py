"""Crash-testing your own job with resumable.testing: a bug caught, then fixed.

Run it with:  pytest examples/test_my_job.py

The job signs a user up: it loads the user, sends a welcome email, and charges the
card. The first version sends the email *between* two steps. When the process dies
after the email went out but before the charge completed, the restarted job replays
the recorded steps and runs the code between them again: the email goes out twice.
`assert_resumable` finds that crash point and says so in words.

The fix moves the email into a step, keyed by `current_step().idempotency_key`
(stable across restarts), which the email service uses to drop a repeated send, as
real APIs do with an ``Idempotency-Key`` header: a step runs *at least* once, so a
side effect in a step must be safe to repeat.
"""

from __future__ import annotations

import pytest

from resumable import checkpoint, current_step, resumable
from resumable.testing import NotResumable, assert_resumable


class FakeMailer:
    """Stands in for an email API; ``sent`` is what the outside world saw."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self._keys: set[str] = set()

    def send(self, to: str, *, idempotency_key: str | None = None) -> None:
        if idempotency_key is not None:
            if idempotency_key in self._keys:
                return  # already sent: the API dedupes on the key
            self._keys.add(idempotency_key)
        self.sent.append(to)

    def reset(self) -> None:
        self.sent.clear()
        self._keys.clear()


mailer = FakeMailer()


@checkpoint
def load_user(user_id: int) -> dict[str, str]:
    return {"email": f"user{user_id}@example.com"}


@checkpoint
def charge_card(user_id: int) -> str:
    return f"receipt-{user_id}"


# -- before: the email is sent outside any step ---------------------------------------


@resumable
def sign_up(user_id: int) -> str:
    user = load_user(user_id)
    mailer.send(user["email"])  # not a step: every restart after this line sends again
    return charge_card(user_id)


def test_sign_up_sends_the_welcome_email_twice_after_a_crash():
    with pytest.raises(NotResumable) as caught:
        assert_resumable(lambda: sign_up(7), setup=mailer.reset, observe=lambda: list(mailer.sent))
    print(caught.value)  # shown with pytest -s
    assert "the side effect `user7@example.com` happened twice instead of once" in str(caught.value)
    assert "it is outside any step" in str(caught.value)


# -- after: the email is a step, safe to repeat ---------------------------------------


@checkpoint
def send_welcome(email: str) -> None:
    step = current_step()
    assert step is not None
    mailer.send(email, idempotency_key=step.idempotency_key)


@resumable
def sign_up_fixed(user_id: int) -> str:
    user = load_user(user_id)
    send_welcome(user["email"])
    return charge_card(user_id)


def test_sign_up_fixed_sends_it_once_whatever_the_crash():
    checked = assert_resumable(
        lambda: sign_up_fixed(7), setup=mailer.reset, observe=lambda: list(mailer.sent)
    )
    assert checked.reference.result == "receipt-7"
    assert checked.restarts > 0  # it really was crashed and restarted
