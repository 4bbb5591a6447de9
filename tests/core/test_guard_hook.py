"""TokenMeter.before_call asks the guard about the resolved customer; only CreditExhausted escapes."""

from decimal import Decimal

import pytest
from stripe_token_meter import CreditExhausted, TokenMeter


class Ref:
    def __init__(self):
        self.released = 0

    def release(self):
        self.released += 1


class G:
    def __init__(self):
        self.asked = []

    def reserve(self, customer_id, model):
        self.asked.append((customer_id, model))
        if customer_id == "cus_broke":
            raise CreditExhausted(customer_id, Decimal("-0.5"), "usd")
        if customer_id == "cus_boom":
            raise RuntimeError("x")
        return Ref()


def test_guard(tmp_path):
    g = G()
    m = TokenMeter(outbox_path=tmp_path / "o.db", guard=g, default_customer_id="cus_dflt")
    assert m.before_call("cus_a", model="openai/gpt-4o") is not None
    with pytest.raises(CreditExhausted) as e:
        m.before_call("cus_broke")
    assert e.value.customer_id == "cus_broke" and "no credit" in str(e.value)
    assert m.before_call("cus_boom") is None
    assert m.before_call() is not None
    with m.customer("cus_scoped"):
        m.before_call()
    assert g.asked == [
        ("cus_a", "openai/gpt-4o"),
        ("cus_broke", None),
        ("cus_boom", None),
        ("cus_dflt", None),
        ("cus_scoped", None),
    ]
    assert m.stats()["adapter_errors"] >= 1
    m.close()
