"""CreditGuard: refuse a customer's LLM call before it is made once their credit is spent.

Why: metering bills usage after the fact; a prepaid customer (a Stripe credit grant, or a
budget of your own) must be stopped before the provider call that would overspend.

How the estimate works (all amounts in micro-units of `currency`, 1 USD = 1,000,000):

    remaining = credit - spent this period - reservations of calls not yet costed

- credit: `source={"cus_x": "10.00"}` a static budget per period in major units, or
  `source="stripe"` the customer's available credit balance for metered prices
  (`GET /v1/billing/credit_balance_summary`, minor units converted).
- spent this period: every cost the meter recorded (`record_cost`, called by the worker
  for each priced call) plus, on `bind`, the cost events the outbox already holds for the
  period (a restarted process does not forget). Stripe subtracts usage from a credit
  balance only when it invoices it, so the balance alone would never go down in a period;
  the guard therefore subtracts what it saw spent. The period is the calendar month in
  UTC unless `period_start` says otherwise; it should match your billing period. The
  estimate does not see spending by other processes sharing the customer (except what
  their outbox held at bind time) nor invoices issued mid-period.
- reservations: each allowed call reserves an amount until its cost arrives: the last
  recorded cost of that customer for that model, else any customer's for that model,
  else that customer's last cost, else 0. A released call keeps its reservation until
  its cost is recorded (a few ms later, on the worker thread) or `COST_WAIT_SECONDS`
  pass, so a tight loop of sequential calls cannot run ahead of its own costs.

A call is refused (`CreditExhausted`) when `remaining <= 0`, so a customer can overdraw by
at most the calls in flight plus one.

`reserve` answers from memory (about 1.5 us with `release`, benchmarks/guard.py), with
three waits, each once and at most `FIRST_CALL_WAIT_SECONDS` (0.5 s): the process's first
call waits for the period's spending loaded from the outbox (a restarted process must not
let a spent customer through); with `source="stripe"` a customer's first call waits for
its first balance (a customer with no credit must not get one call per process); and a
customer's second call waits for the first one's cost when nothing is known yet of what a
call costs (the worker prices it a few ms later). Without them a tight loop in a fresh
process runs ahead of what the guard knows.

Customers whose credit is unknown: not in the dict, or (`source="stripe"`) not fetched
yet or Stripe failed. `on_unavailable="allow"` lets their calls through (and, for Stripe,
fetches the balance in the background); `"deny"` refuses them until a balance is known.
Every Stripe request runs on the guard's own thread (`reserve` only waits for the first
answer, as above), at most one per customer per `refresh_seconds` window (plus one sooner when the
estimate falls below 10 % of the last balance, at most once a window, and one at once per
`handle_event` of a credit grant or alert).
"""

from __future__ import annotations

import calendar
import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final, Literal

from .errors import ConfigurationError, CreditExhausted
from .guard import GuardBinding
from .pricing import MICROS, minor_unit_micros

if TYPE_CHECKING:
    import stripe

log = logging.getLogger("stripe_token_meter")

COST_WAIT_SECONDS: Final = 5.0
"""How long a released call's reservation waits for its cost before it is dropped."""
LOW_BALANCE_FRACTION: Final = Decimal("0.1")
MIN_LOW_REFRESH_SECONDS: Final = 1.0
"""An early (low-balance) refresh never follows the previous request sooner than this."""
FIRST_CALL_WAIT_SECONDS: Final = 0.5
"""Longest `reserve` waits, once each: for the spending a restarted process loads from the
outbox (the first call of all), for a customer's first balance (`source="stripe"`, its
first call) and for its first call's cost (its second call)."""
_UNKNOWN_BALANCE: Final = (
    "has a credit balance Stripe did not give (yet), and the guard refuses such calls "
    "(on_unavailable='deny')"
)
_NOT_LISTED: Final = "has no budget in the guard's source, and on_unavailable='deny'"
RETRY_SECONDS: Final = 5.0
"""A failed balance request is retried after this (or `refresh_seconds`, if shorter)."""
_MAX_SLEEP: Final = 60.0
_EVENT_TYPES: Final = frozenset({"billing.credit_grant.created", "billing.alert.triggered"})

Source = Literal["stripe"] | Mapping[str, str | Decimal | int]


def _after_fork(ref: weakref.ReferenceType[CreditGuard]) -> None:
    guard = ref()
    if guard is not None:
        guard._forked()


def month_start_utc(now: float) -> float:
    """Start (Unix seconds) of the calendar month in UTC containing `now`: the default period."""
    d = datetime.fromtimestamp(now, timezone.utc)
    return float(calendar.timegm((d.year, d.month, 1, 0, 0, 0)))


def _field(obj: Any, key: str) -> Any:
    """`obj[key]` for a dict or a `stripe.StripeObject`; None when absent."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    try:
        return obj[key]
    except (KeyError, TypeError, AttributeError):
        return getattr(obj, key, None)


class _Account:
    """One customer's numbers; read and changed only under the guard's lock."""

    __slots__ = (
        "answered",
        "asked",
        "awaiting",
        "awaiting_total",
        "balance",
        "credit",
        "due",
        "early",
        "in_flight",
        "last_cost",
        "last_request",
        "low_asked",
        "spent",
        "unknown",
        "unknown_released",
        "waited",
    )

    def __init__(self, credit: int | None) -> None:
        self.credit = credit
        self.balance = credit
        self.spent = 0
        self.in_flight = 0
        self.awaiting: collections.deque[tuple[float, int, str | None]] = collections.deque()
        self.awaiting_total = 0
        self.early: collections.deque[float] = collections.deque()
        self.last_cost: int | None = None
        self.due = 0.0
        self.last_request = float("-inf")
        self.low_asked = False
        self.answered = credit is not None
        """A balance request was answered (or failed): nothing to wait for."""
        self.waited = False
        self.asked = False
        """The customer's first call waited for its first balance answer (once)."""
        self.unknown_released = 0
        """Of those, the calls already released: their cost is being priced right now."""
        self.unknown = 0
        """Holds (in flight or awaiting their cost) reserved while no cost was known: each
        counts as the customer's last cost once one is known."""

    def left(self, credit: int) -> int:
        """The estimate: credit minus spent minus every reservation."""
        return (
            credit
            - self.spent
            - self.in_flight
            - self.awaiting_total
            - self.unknown * (self.last_cost or 0)
        )


class _Hold:
    """A reservation; `release` is idempotent and never raises."""

    __slots__ = ("_account", "_amount", "_done", "_guard", "_model")

    def __init__(self, guard: CreditGuard, account: _Account, model: str | None, amount: int):
        self._guard = guard
        self._account = account
        self._model = model
        self._amount = amount
        self._done = False

    def release(self) -> None:
        if self._done:
            return
        try:
            self._guard._release(self)
        except Exception:  # a hold never raises into user code
            log.debug("credit guard: release failed", exc_info=True)


class CreditGuard:
    """A `Guard` that refuses calls of customers whose credit is spent (see module doc).

    `source`: `"stripe"` (credit grants) or `{customer_id: "10.00"}`, a budget per period
    in major units of `currency` (a customer not listed is "unavailable": see
    `on_unavailable`). `refresh_seconds`: how old a Stripe balance may get. `currency`:
    default the meter's pricing currency. `api_key`: default the meter's key (or its
    `stripe_client`). `period_start(now) -> start`: default the calendar month in UTC.
    """

    def __init__(
        self,
        source: Source = "stripe",
        *,
        refresh_seconds: float = 60,
        on_unavailable: Literal["allow", "deny"] = "allow",
        currency: str | None = None,
        api_key: str | None = None,
        period_start: Callable[[float], float] | None = None,
    ) -> None:
        if on_unavailable not in ("allow", "deny"):
            raise ConfigurationError("on_unavailable must be 'allow' or 'deny'")
        if not refresh_seconds > 0:
            raise ConfigurationError("refresh_seconds must be positive")
        if api_key is not None and api_key.startswith("pk_"):
            raise ConfigurationError("CreditGuard needs a secret or restricted key, not pk_")
        self._stripe = source == "stripe"
        budgets: dict[str, int] = {}
        if not self._stripe:
            if not isinstance(source, Mapping):
                raise ConfigurationError('source must be "stripe" or {customer_id: "amount"}')
            for cid, amount in source.items():
                try:
                    budget = Decimal(str(amount))
                    if isinstance(amount, float) or not budget.is_finite() or budget < 0:
                        raise ValueError(amount)
                    budgets[cid] = int(budget * MICROS)
                except (InvalidOperation, ValueError):
                    raise ConfigurationError(
                        f"source[{cid!r}]: {amount!r} is not a non-negative decimal string"
                    ) from None
        self._refresh = float(refresh_seconds)
        self._deny = on_unavailable == "deny"
        self._currency_override = currency.lower() if currency else None
        self._currency = self._currency_override or "usd"
        self._api_key = api_key
        self._period_start = period_start or month_start_utc
        self._period = self._period_start(time.time())
        self._lock = threading.Lock()
        self._cost_arrived = threading.Condition(self._lock)
        self._cost_waiters = 0
        self._unpriced: set[str | None] = set()
        """Models whose first cost never came within the wait (not priced?): not waited for
        again, for any customer."""
        self._accounts: dict[str, _Account] = {c: _Account(v) for c, v in budgets.items()}
        self._model_cost: dict[tuple[str, str], int] = {}
        self._any_model_cost: dict[str, int] = {}
        self._wanted: set[str] = set()
        self._binding: GuardBinding | None = None
        self._load_pending = False
        self._client: stripe.StripeClient | None = None
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._loaded = threading.Event()
        self._load_waited = False
        self._counts: collections.Counter[str] = collections.Counter()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    # ------------------------------------------------------------------ caller's thread

    def reserve(self, customer_id: str, model: str | None) -> _Hold | None:
        """Refuse (`CreditExhausted`) or reserve for one call, from memory.

        One exception to "never waits", once per customer: the customer's first call has
        ended, but its cost is not priced yet and no cost of this model is known (or, with
        `source="stripe"`, the first balance request is not answered yet). Then the next
        call waits for those, at most `FIRST_CALL_WAIT_SECONDS`: without it a tight loop
        in a fresh process would run ahead of the worker with nothing reserved.
        """
        now = time.monotonic()
        with self._lock:
            if self._thread is None:  # period roll-over and balance requests
                self._start_thread()
            if not self._load_waited and self._binding is not None:
                self._load_waited = True
                self._await(self._loaded.is_set)
            acc = self._accounts.get(customer_id)
            if acc is None:
                if not self._stripe:
                    if self._deny:
                        self._counts["refused"] += 1
                        raise CreditExhausted(
                            customer_id, Decimal(0), self._currency, reason=_NOT_LISTED
                        )
                    return None
                acc = self._accounts[customer_id] = _Account(None)
            if self._stripe and not acc.asked and not acc.answered:
                acc.asked = True
                self._want(acc, customer_id, now)
                self._await(lambda: acc.answered)
                now = time.monotonic()
            if acc.unknown_released and not acc.waited:
                acc.waited = True
                self._await_first_call(acc, model)
                now = time.monotonic()
            if self._stripe and now >= acc.due:
                acc.low_asked = False
                self._want(acc, customer_id, now)
            credit = acc.credit
            if credit is None:
                if self._deny:
                    self._counts["refused"] += 1
                    raise CreditExhausted(
                        customer_id, Decimal(0), self._currency, reason=_UNKNOWN_BALANCE
                    )
                remaining = None
            else:
                if acc.awaiting and acc.awaiting[0][0] <= now:
                    self._expire(acc, now)
                remaining = acc.left(credit)
                if remaining <= 0:
                    self._counts["refused"] += 1
                    raise CreditExhausted(customer_id, Decimal(remaining) / MICROS, self._currency)
                balance = acc.balance
                if (
                    self._stripe
                    and balance
                    and not acc.low_asked
                    and remaining * 10 < balance
                    and now - acc.last_request >= MIN_LOW_REFRESH_SECONDS
                ):
                    acc.low_asked = True
                    self._want(acc, customer_id, now)
            amount = 0
            if model is not None:
                amount = self._model_cost.get((customer_id, model)) or self._any_model_cost.get(
                    model, 0
                )
            if not amount:
                amount = acc.last_cost or 0
            if amount:
                acc.in_flight += amount
            else:
                acc.unknown += 1
        return _Hold(self, acc, model, amount)

    def _await(self, ready: Callable[[], bool]) -> bool:
        """Wait (lock released) until `ready()`, at most `FIRST_CALL_WAIT_SECONDS`."""
        if ready():
            return True
        self._cost_waiters += 1
        try:
            return self._cost_arrived.wait_for(ready, FIRST_CALL_WAIT_SECONDS)
        finally:
            self._cost_waiters -= 1

    def _await_first_call(self, acc: _Account, model: str | None) -> None:
        """Wait (lock released) until a cost for this customer or model and, for Stripe,
        a balance answer are known."""
        costs = self._any_model_cost

        def ready() -> bool:
            priced = (
                acc.last_cost is not None
                or not acc.unknown_released
                or (model is not None and model in costs)
            )
            return priced and (acc.answered or not self._stripe)

        if ready() or model in self._unpriced:
            return
        self._cost_waiters += 1
        try:
            if not self._cost_arrived.wait_for(ready, FIRST_CALL_WAIT_SECONDS):
                self._unpriced.add(model)
        finally:
            self._cost_waiters -= 1

    def _want(self, acc: _Account, customer_id: str, now: float) -> None:
        """Ask the guard's thread for this customer's balance (under the lock)."""
        acc.due = now + self._refresh
        self._wanted.add(customer_id)
        self._start_thread()
        self._wake.set()

    @staticmethod
    def _expire(acc: _Account, now: float) -> None:
        while acc.awaiting and acc.awaiting[0][0] <= now:
            CreditGuard._settle(acc, acc.awaiting.popleft()[1])

    @staticmethod
    def _settle(acc: _Account, amount: int) -> None:
        """A released call's reservation ends (its cost arrived, or it waited too long)."""
        if amount:
            acc.awaiting_total -= amount
        else:
            acc.unknown -= 1
            acc.unknown_released -= 1

    def _release(self, hold: _Hold) -> None:
        now = time.monotonic()
        acc, amount = hold._account, hold._amount
        with self._lock:
            if hold._done:  # released by another thread meanwhile
                return
            hold._done = True
            early = acc.early
            while early and early[0] <= now:
                early.popleft()
            if early:  # this call's cost was recorded before the call was released
                early.popleft()
                if amount:
                    acc.in_flight -= amount
                else:
                    acc.unknown -= 1
                return
            if amount:
                acc.in_flight -= amount
                acc.awaiting_total += amount
            else:
                acc.unknown_released += 1
            acc.awaiting.append((now + COST_WAIT_SECONDS, amount, hold._model))

    # ------------------------------------------------------------------ worker's thread

    def record_cost(self, customer_id: str, micros: int, model: str | None = None) -> None:
        """Count a priced call's marked-up cost (micro-units) against its customer."""
        now = time.monotonic()
        with self._lock:
            acc = self._accounts.get(customer_id)
            if acc is None:
                if not self._stripe:  # no budget: nothing to count against
                    return
                acc = self._accounts[customer_id] = _Account(None)
            acc.spent += micros
            acc.last_cost = micros
            if acc.awaiting:
                _, amount, held_model = acc.awaiting.popleft()
                self._settle(acc, amount)
                model = model or held_model
            else:
                acc.early.append(now + COST_WAIT_SECONDS)
            if model is not None:
                self._model_cost[(customer_id, model)] = micros
                self._any_model_cost[model] = micros
            if self._cost_waiters:
                self._cost_arrived.notify_all()

    # ------------------------------------------------------------------ meter hooks

    def bind(self, binding: GuardBinding) -> None:
        """Remember where the meter keeps usage and how to reach Stripe; load the cost the
        outbox already holds for this period on the guard's thread (never the caller's)."""
        with self._lock:
            self._binding = binding
            if self._currency_override is None:
                self._currency = binding.currency.lower()
            elif binding.cost_event_name is not None and binding.currency != self._currency:
                log.warning(
                    "CreditGuard: currency %s differs from the pricing's %s; costs are "
                    "counted as if they were in %s",
                    self._currency,
                    binding.currency,
                    self._currency,
                )
            self._client = None
            self._load_pending = binding.cost_event_name is not None
            if not self._load_pending:
                self._loaded.set()
                log.warning(
                    "CreditGuard: the meter has no pricing, so no cost is recorded; "
                    "only the credit itself limits calls"
                )
            self._start_thread()
            self._wake.set()

    def close(self) -> None:
        """Stop the guard's thread (the meter calls this when it closes)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    # ------------------------------------------------------------------ public helpers

    def handle_event(self, event: Any) -> bool:
        """Refresh a customer's balance at once on `billing.credit_grant.created` or
        `billing.alert.triggered` (a dict or `stripe.Event`); True if the event was used."""
        if not self._stripe or _field(event, "type") not in _EVENT_TYPES:
            return False
        obj = _field(_field(event, "data"), "object")
        customer = _field(obj, "customer")
        if not isinstance(customer, str):
            customer = _field(customer, "id")
        if not isinstance(customer, str) or not customer:
            return False
        with self._lock:
            acc = self._accounts.get(customer)
            if acc is None:
                acc = self._accounts[customer] = _Account(None)
            acc.low_asked = False
            self._want(acc, customer, time.monotonic())
        return True

    def prefetch(self, customer_ids: Iterable[str]) -> None:
        """Fetch these customers' balances now, in the background (e.g. at start-up)."""
        if not self._stripe:
            return
        now = time.monotonic()
        with self._lock:
            for cid in customer_ids:
                acc = self._accounts.get(cid)
                if acc is None:
                    acc = self._accounts[cid] = _Account(None)
                self._want(acc, cid, now)

    def remaining(self, customer_id: str) -> Decimal | None:
        """The current estimate in major units of the currency; None while unknown."""
        now = time.monotonic()
        with self._lock:
            acc = self._accounts.get(customer_id)
            if acc is None or acc.credit is None:
                return None
            self._expire(acc, now)
            left = acc.left(acc.credit)
        return Decimal(left) / MICROS

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Wait until the period's spending has been loaded from the outbox after `bind`."""
        return self._loaded.wait(timeout)

    def stats(self) -> dict[str, int]:
        """Counters: `refused` calls, balance `requests` and `errors`, `loaded` customers."""
        with self._lock:
            return dict(self._counts)

    @property
    def currency(self) -> str:
        return self._currency

    # ------------------------------------------------------------------ guard's thread

    def _forked(self) -> None:
        """In a forked child: the parent's thread is gone and its lock may be held by a
        thread that no longer exists. Fresh ones; the known balances and spending stay,
        and the child's first use starts its own thread (and refreshes what is due)."""
        self._lock = threading.Lock()
        self._cost_arrived = threading.Condition(self._lock)
        self._cost_waiters = 0
        self._wake = threading.Event()
        self._thread = None
        self._client = None  # the parent's HTTP connections are not the child's
        loaded = self._loaded.is_set()
        self._loaded = threading.Event()
        if loaded or self._binding is None:
            self._loaded.set()
        for cid, acc in self._accounts.items():
            if self._stripe and not acc.answered:
                self._wanted.add(cid)
                acc.asked = False

    def _start_thread(self) -> None:
        """Start the background thread once (under the lock)."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._run, name="stripe-token-meter-credit-guard", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(_MAX_SLEEP)
            self._wake.clear()
            with self._lock:
                if self._closed:
                    return
                load = self._load_pending
                self._load_pending = False
                wanted = list(self._wanted)
                self._wanted.clear()
            try:
                self._roll_period()
                if load:
                    self._load_spent()
                if self._stripe and self._binding is not None:
                    self._stripe_client()  # built now: the first balance request is quicker
                for cid in wanted:
                    self._fetch(cid)
            except Exception:  # the guard's thread must keep running
                log.warning("CreditGuard: background step failed", exc_info=True)

    def _roll_period(self) -> None:
        start = self._period_start(time.time())
        with self._lock:
            if start == self._period:
                return
            self._period = start
            for acc in self._accounts.values():
                acc.spent = 0

    def _load_spent(self) -> None:
        """Add the period's cost events the outbox held before bind (a restart's memory)."""
        binding = self._binding
        try:
            if binding is None or binding.cost_event_name is None:
                return
            from .storage import open_store

            until = time.time()
            store = open_store(binding.outbox, readonly=True)
            try:
                with self._lock:
                    since = self._period
                spent = store.spent_since(binding.cost_event_name, since, until)
            finally:
                store.close()
            with self._lock:
                for cid, micros in spent.items():
                    acc = self._accounts.get(cid)
                    if acc is None:
                        if not self._stripe:
                            continue
                        acc = self._accounts[cid] = _Account(None)
                    acc.spent += micros
                    self._counts["loaded"] += 1
        except Exception as exc:  # an unreadable outbox must not stop the guard
            log.warning("CreditGuard: could not load this period's spending: %s", exc)
        finally:
            with self._lock:
                self._loaded.set()
                if self._cost_waiters:
                    self._cost_arrived.notify_all()

    def _stripe_client(self) -> stripe.StripeClient | None:
        if self._client is not None:
            return self._client
        binding = self._binding
        if self._api_key is None and binding is not None and binding.stripe_client is not None:
            self._client = binding.stripe_client
            return self._client
        key = self._api_key or (binding.api_key if binding is not None else None)
        if not key:
            return None
        import stripe

        base = binding.api_base if binding is not None else None
        self._client = stripe.StripeClient(
            key,
            base_addresses={"api": base} if base else None,
            http_client=stripe.new_default_http_client(timeout=10),
            max_network_retries=1,
        )
        return self._client

    def _fetch(self, customer_id: str) -> None:
        """One balance request; on failure the old balance (or none) stays."""
        now = time.monotonic()
        with self._lock:
            acc = self._accounts[customer_id]
            acc.last_request = now
            acc.due = now + self._refresh
            currency = self._currency
            self._counts["requests"] += 1
        try:
            client = self._stripe_client()
            if client is None:
                raise ConfigurationError("no Stripe API key (CreditGuard(api_key=) or bind)")
            summary = client.v1.billing.credit_balance_summary.retrieve(
                {
                    "customer": customer_id,
                    "filter": {
                        "type": "applicability_scope",
                        "applicability_scope": {"price_type": "metered"},
                    },
                }
            )
            value = 0
            for bal in _field(summary, "balances") or ():
                money = _field(_field(bal, "available_balance"), "monetary")
                if money is not None and str(_field(money, "currency")).lower() == currency:
                    value += int(_field(money, "value") or 0)
        except Exception as exc:  # Stripe failing must not reach the caller
            with self._lock:
                self._counts["errors"] += 1
                acc.due = min(acc.due, time.monotonic() + RETRY_SECONDS)
                acc.answered = True
                if self._cost_waiters:
                    self._cost_arrived.notify_all()
            # The type and Stripe's message only: never the key (Stripe masks it already).
            log.warning(
                "CreditGuard: balance of %s unavailable (%s: %s)",
                customer_id,
                type(exc).__name__,
                getattr(exc, "user_message", None) or "request failed",
            )
            return
        micros = value * minor_unit_micros(currency)
        with self._lock:
            acc.credit = acc.balance = micros
            acc.answered = True
            if self._cost_waiters:
                self._cost_arrived.notify_all()
