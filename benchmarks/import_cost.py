"""Import cost: `import stripe_token_meter` and each adapter, over the framework's own import.

Every measurement is a fresh interpreter (`python -c ...`) that times its imports with
perf_counter: first the framework (what an app using it has imported anyway), then the
adapter on top; the adapter's figure is that second, marginal, import. The core is timed
alone and also after the framework (it shares dependencies such as httpx with some).
A single `-X importtime` run names the heaviest modules the core pulls in.

    uv run python benchmarks/import_cost.py [--quick] [--runs N]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

# What any LangChain chat model imports (langchain_core.language_models alone is lazy).
LC_BASE = ["langchain_core.callbacks", "langchain_core.language_models.chat_models"]

# (label, framework modules an app already imports, module measured on top of them)
CASES: list[tuple[str, list[str], str]] = [
    ("stripe_token_meter (alone)", [], "stripe_token_meter"),
    ("stripe SDK alone (the core's heaviest dependency)", [], "stripe"),
    ("langchain_stripe over langchain_core", LC_BASE, "langchain_stripe"),
    ("litellm_stripe over litellm", ["litellm"], "litellm_stripe"),
    ("llamaindex_stripe over llama_index.core", ["llama_index.core"], "llamaindex_stripe"),
]

_PROBE = """
import importlib, json, sys, time
base, target = json.loads(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
for m in base:
    importlib.import_module(m)
t1 = time.perf_counter()
try:
    importlib.import_module(target)
    err = None
except Exception as exc:
    err = f"{type(exc).__name__}: {exc}"
t2 = time.perf_counter()
print(json.dumps({"base": t1 - t0, "target": t2 - t1, "error": err}))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    return env


def probe(base: list[str], target: str) -> dict[str, float | str | None]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(base), target],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    if out.returncode != 0:
        return {"base": 0.0, "target": 0.0, "error": out.stderr.strip().splitlines()[-1]}
    result: dict[str, float | str | None] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def heaviest(target: str, top: int = 8) -> list[tuple[str, float]]:
    """Top-level packages by self time in one `-X importtime` run of `import target`."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {target}"],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    per_pkg: dict[str, float] = defaultdict(float)
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            per_pkg[m.group(4).strip().split(".")[0]] += int(m.group(1)) / 1000.0
    return sorted(per_pkg.items(), key=lambda kv: -kv[1])[:top]


def main() -> int:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    runs = args.runs or (1 if args.quick else 15)
    c.header("import cost", args.quick)
    print(f"  {runs} fresh interpreters per figure", flush=True)
    report = c.Report("Import cost")
    if not args.quick:
        for _ in range(3):  # warm the page cache
            probe([], "sys")
    for label, base, target in CASES:
        samples = [probe(base, target) for _ in range(runs)]
        errors = {s["error"] for s in samples if s["error"]}
        if errors:
            msg = f"{label}: SKIPPED ({sorted(errors)[0]})"
            print(f"  {msg}", flush=True)
            report.checks.append((f"{label} importable", True, "skipped: " + msg[:90]))
            continue
        added = [1000 * float(s["target"] or 0) for s in samples]
        if base:
            framework = [1000 * float(s["base"] or 0) for s in samples]
            report.add(
                c.Result(f"{label}: framework import", c.summarize(framework), "ms", digits=0)
            )
            report.add(c.Result(f"{label}: adapter on top", c.summarize(added), "ms", digits=0))
            ratio = [a / f for a, f in zip(added, framework, strict=True) if f]
            report.add(c.Result(f"{label}: adapter / framework", c.summarize(ratio), "x", digits=2))
        else:
            report.add(c.Result(label, c.summarize(added), "ms", digits=0))
    core_after = [probe(LC_BASE, "stripe_token_meter") for _ in range(runs)]
    report.add(
        c.Result(
            "stripe_token_meter after langchain_core",
            c.summarize([1000 * float(s["target"] or 0) for s in core_after]),
            "ms",
            digits=0,
            note="the core's share of langchain_stripe's marginal cost",
        )
    )
    if not args.quick:
        print("  heaviest packages under `import stripe_token_meter` (-X importtime, self ms):")
        for pkg, ms in heaviest("stripe_token_meter"):
            print(f"    {pkg:<24} {ms:7.1f} ms", flush=True)
    report.print_table()
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
