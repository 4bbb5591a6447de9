"""An event is only ever sent through the API it was first sent with.

Why: the v2 stream answers 200 before it validates, so a v1 event Stripe refused on the
spot, replayed and left pending (the replay timed out), must not be "delivered" by a v2
app's worker, where Stripe would drop it unbilled. Rows of another API stay pending for a
process of that API, or for `stripe-token-meter flush`/`replay`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from stripe_token_meter import TokenMeter
from stripe_token_meter.outbox import Outbox
from support.events import stored_event


def test_a_worker_sends_only_rows_of_its_own_api(
    make_meter: Callable[..., TokenMeter], fake_stripe: Any, tmp_path: Path
) -> None:
    path = tmp_path / "shared.sqlite3"
    seed = Outbox(path)
    seed.add([stored_event("first-v1", value=3)], api="v1")
    seed.add([stored_event("first-v2", value=5)], api="v2")
    seed.add([stored_event("older", value=7)])  # before the api column: anyone's
    seed.close()

    v2 = make_meter(outbox_path=path, api="v2")
    assert not v2.flush(3)  # the v1 row is still pending: not this worker's
    assert sorted((e.identifier, e.api, e.value) for e in fake_stripe.events()) == [
        ("first-v2:input:token-billing-tokens", "v2", 5),
        ("older:input:token-billing-tokens", "v2", 7),
    ]
    v2.close()
    assert Outbox(path).pending_by_api("v2") == {"v1": 1}

    v1 = make_meter(outbox_path=path, api="v1")
    assert v1.flush(10)
    assert sorted((e.identifier, e.api, e.value) for e in fake_stripe.events()) == [
        ("first-v1:input:token-billing-tokens", "v1", 3),
        ("first-v2:input:token-billing-tokens", "v2", 5),
        ("older:input:token-billing-tokens", "v2", 7),
    ]
