"""`Pricing`: exact Decimal costs in micro-units, fallbacks, files, LiteLLM's cost map,
and errors that name the model and the key."""

from __future__ import annotations

import json
import os
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from stripe_token_meter import Pricing, PricingError
from stripe_token_meter.errors import ConfigurationError

GPT = {"openai/gpt-4o": {"input": "2.50", "cached_input": "1.25", "output": "10.00"}}


def test_the_sanity_case_is_exact() -> None:
    pricing = Pricing(GPT, markup_percent=20)
    # (1234 * 2.5 + 567 * 10) = 8755 micros, * 1.2 = 10506 exactly
    assert pricing.cost_micros("openai/gpt-4o", input_tokens=1234, output_tokens=567) == 10_506
    assert (
        pricing.cost_micros(
            "openai/gpt-4o", input_tokens=1234, output_tokens=567, token_types="basic"
        )
        == 10_506
    )
    assert pricing.cost_micros("openai/gpt-4o-mini", input_tokens=1) is None
    assert pricing.cost_micros("openai/gpt-4o") == 0


def test_basic_and_detailed_with_fallbacks() -> None:
    pricing = Pricing(
        {
            "m/all": {
                "input": 3,
                "cached_input": "0.3",
                "cache_write": "3.75",
                "output": Decimal("15"),
                "reasoning": "20",
            },
            "m/min": {"input": "2", "output": "8"},
        }
    )
    counts = {
        "input_tokens": 100,
        "cached_input_tokens": 1000,
        "cache_write_tokens": 200,
        "output_tokens": 50,
        "reasoning_tokens": 30,
    }
    # detailed: 300 + 300 + 750 + 750 + 600
    assert pricing.cost_micros("m/all", **counts) == 2_700
    # basic: 1300 prompt tokens at 3, 80 completion tokens at 15
    assert pricing.cost_micros("m/all", token_types="basic", **counts) == 5_100
    # fallbacks: cached and cache write at input (2), reasoning at output (8)
    assert pricing.cost_micros("m/min", **counts) == 1300 * 2 + 80 * 8
    assert pricing.price("m/min", "cached_input") == Decimal("2")
    assert pricing.price("m/min", "cache_write") == Decimal("2")
    assert pricing.price("m/min", "reasoning") == Decimal("8")
    assert pricing.price("m/all", "cached_input") == Decimal("0.3")
    assert pricing.price("m/none", "input") is None
    assert pricing.models == ["m/all", "m/min"]


def test_rounding_is_half_up_once_after_the_markup() -> None:
    pricing = Pricing({"m/x": {"input": "0.5", "output": "0.25"}}, markup_percent="10")
    # 1 * 0.5 * 1.1 = 0.55 -> 1; rounding each part first would give different totals
    assert pricing.cost_micros("m/x", input_tokens=1) == 1
    # 3 * 0.25 = 0.75, * 1.1 = 0.825 -> 1
    assert pricing.cost_micros("m/x", output_tokens=3) == 1
    # 1 * 0.25 * 1.1 = 0.275 -> 0
    assert pricing.cost_micros("m/x", output_tokens=1) == 0
    # exactly half: 1 token at 0.5, no markup -> 1 (half up, not banker's 0)
    assert Pricing({"m/x": {"input": "0.5", "output": "0"}}).cost_micros("m/x", input_tokens=1) == 1
    assert Pricing({"m/x": {"input": "2.5", "output": "0"}}).cost_micros("m/x", input_tokens=1) == 3
    big = Pricing({"m/x": {"input": "15", "output": "75"}}, markup_percent="33.3")
    # 10**9 * 15 * 1.333 = 19,995,000,000 exactly (Decimal, no float drift)
    assert big.cost_micros("m/x", input_tokens=10**9) == 19_995_000_000


@pytest.mark.parametrize(
    ("prices", "kwargs", "names"),
    [
        ({"m/x": {"output": "1"}}, {}, "prices['m/x']: missing 'input'"),
        ({"m/x": {"input": "1"}}, {}, "prices['m/x']: missing 'output'"),
        ({"m/x": {"input": "-1", "output": "1"}}, {}, "prices['m/x']['input']: must be a finite"),
        (
            {"m/x": {"input": "1", "output": "ten"}},
            {},
            "prices['m/x']['output']: must be a decimal",
        ),
        ({"m/x": {"input": "NaN", "output": "1"}}, {}, "prices['m/x']['input']: must be a finite"),
        ({"m/x": {"input": 0.1, "output": "1"}}, {}, 'write it as a string, e.g. "0.1"'),
        ({"m/x": {"input": True, "output": "1"}}, {}, "prices['m/x']['input']: must be a decimal"),
        ({"m/x": {"input": "1", "output": "1", "cached": "1"}}, {}, "['cached']: unknown token"),
        ({"m/x": "1"}, {}, "prices['m/x']: must be a mapping"),
        ({"": {"input": "1", "output": "1"}}, {}, "model names must be non-empty"),
        (GPT, {"markup_percent": "-5"}, "markup_percent: must be a finite number >= 0"),
        (GPT, {"markup_percent": "lots"}, "markup_percent: must be a decimal number"),
        (GPT, {"currency": "dollars"}, "currency: must be a three-letter ISO code"),
        (GPT, {"currency": 840}, "currency: must be a three-letter ISO code"),
    ],
)
def test_bad_prices_name_the_model_and_key(
    prices: object, kwargs: dict[str, object], names: str
) -> None:
    with pytest.raises(PricingError) as info:
        Pricing(prices, **kwargs)  # type: ignore[arg-type]
    assert names in str(info.value)
    assert isinstance(info.value, ConfigurationError)


def test_plain_form_round_trips_as_strings() -> None:
    pricing = Pricing(GPT, markup_percent=Decimal("12.50"), currency="EUR")
    plain = pricing.as_plain()
    assert plain == {
        "prices": {"openai/gpt-4o": {"cached_input": "1.25", "input": "2.5", "output": "10"}},
        "markup_percent": "12.5",
        "currency": "eur",
    }
    again = Pricing.from_plain(json.loads(json.dumps(plain)))
    assert again == pricing and again.as_plain() == plain
    assert again.cost_micros("openai/gpt-4o", input_tokens=8) == 23  # 20 * 1.125 = 22.5 -> 23
    with pytest.raises(PricingError, match="expected a mapping with 'prices'"):
        Pricing.from_plain({"currency": "usd"})


def test_from_file_json_and_toml(tmp_path: Path) -> None:
    as_json = tmp_path / "prices.json"
    as_json.write_text(
        '{"markup_percent": 20, "currency": "usd", "prices": {"openai/gpt-4o": '
        '{"input": 2.50, "cached_input": "1.25", "output": 10.00}}}'
    )
    as_toml = tmp_path / "prices.toml"
    as_toml.write_text(
        'markup_percent = 20\n\n[prices."openai/gpt-4o"]\ninput = 2.50\ncached_input = "1.25"\n'
        "output = 10.00\n"
    )
    expected = Pricing(GPT, markup_percent=20)
    for path in (as_json, as_toml):
        pricing = Pricing.from_file(path)
        assert pricing == expected, path
        assert pricing.cost_micros("openai/gpt-4o", input_tokens=1234, output_tokens=567) == 10_506


def test_from_file_errors_name_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"prices": {"openai/gpt-4o": {"input": "2.5"}}}')
    with pytest.raises(
        PricingError, match=r"bad\.json: prices\['openai/gpt-4o'\]: missing 'output'"
    ):
        Pricing.from_file(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("prices = [")
    with pytest.raises(PricingError, match=r"broken\.toml: not valid TOML"):
        Pricing.from_file(broken)
    no_prices = tmp_path / "empty.json"
    no_prices.write_text('{"markup": 5}')
    with pytest.raises(PricingError, match="needs a top-level 'prices'"):
        Pricing.from_file(no_prices)
    extra = tmp_path / "extra.json"
    extra.write_text('{"prices": {}, "markup": 5}')
    with pytest.raises(PricingError, match=r"unknown top-level keys \['markup'\]"):
        Pricing.from_file(extra)
    with pytest.raises(PricingError, match=r"must end in \.json or \.toml"):
        Pricing.from_file(tmp_path / "prices.yaml")
    with pytest.raises(PricingError, match="cannot be read"):
        Pricing.from_file(tmp_path / "missing.json")


def test_from_litellm_reads_the_bundled_cost_map() -> None:
    assert os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP") == "True"
    import litellm

    entry = litellm.model_cost["gpt-4o"]
    pricing = Pricing.from_litellm(["openai/gpt-4o", "gpt-4o-2024-08-06"], markup_percent=20)
    assert pricing.models == ["openai/gpt-4o"]
    expected_in = Decimal(repr(entry["input_cost_per_token"])) * 1_000_000
    expected_out = Decimal(repr(entry["output_cost_per_token"])) * 1_000_000
    expected_cached = Decimal(repr(entry["cache_read_input_token_cost"])) * 1_000_000
    assert (expected_in, expected_out, expected_cached) == (
        Decimal("2.5"),
        Decimal("10"),
        Decimal("1.25"),
    )  # the map's gpt-4o prices as published
    assert pricing.price("openai/gpt-4o", "input") == expected_in
    assert pricing.price("openai/gpt-4o", "output") == expected_out
    assert pricing.price("openai/gpt-4o", "cached_input") == expected_cached
    assert pricing.cost_micros("openai/gpt-4o", input_tokens=1234, output_tokens=567) == 10_506
    everything = Pricing.from_litellm()
    assert "openai/gpt-4o" in everything.models and len(everything.models) > 100
    assert everything.currency == "usd" and everything.markup_percent == 0
    with pytest.raises(PricingError, match=r"models \['openai/no-such-model'\]"):
        Pricing.from_litellm(["openai/gpt-4o", "openai/no-such-model"])


def test_from_litellm_without_litellm_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litellm", None)  # as if not installed
    with pytest.raises(PricingError, match="needs litellm: pip install litellm"):
        Pricing.from_litellm()


def test_a_model_without_its_provider_takes_the_one_price_of_that_name() -> None:
    p = Pricing(
        {
            "openai/gpt-4o": {"input": "2.50", "output": "10.00"},
            "mistral-large": {"input": "2", "output": "6"},
            "openai/o3": {"input": "2", "output": "8"},
            "azure/o3": {"input": "3", "output": "9"},
        },
        markup_percent=20,
    )
    assert p.cost_micros("gpt-4o", input_tokens=1234, output_tokens=567) == 10_506
    assert p.cost_micros("mistral/mistral-large", input_tokens=1_000_000) == 2_400_000
    assert p.cost_micros("azure/gpt-4o", input_tokens=1) is None  # not openai's price
    assert p.cost_micros("o3", input_tokens=1) is None  # two providers: ambiguous
    assert p.cost_micros("azure/o3", input_tokens=1_000_000) == 3_600_000
