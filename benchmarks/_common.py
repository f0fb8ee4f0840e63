"""Shared helpers of the benchmarks: hardware description, timing, Markdown/JSON reports, torch setup.

Timing rules every benchmark follows: compile and warm up first, then time several repeats of a fixed
amount of work, each ending only once the results are ready (``jax.block_until_ready`` /
``torch.cuda.synchronize``), and report the median.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

TORCH_MISSING = (
    "PyTorch is needed for the baseline but is not installed. Install the bench extra "
    "(pip install -e '.[bench]', or pip install torch) or pass --no-torch to skip the baseline."
)


def require_torch():
    """Import torch or exit with a clear message (the baseline was requested)."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit(f"error: {TORCH_MISSING} ({e})") from e
    return torch


def torch_device(torch) -> Any:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def torch_sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware(torch=None) -> dict:
    """Device names and versions of what this run uses."""
    import jax

    dev = jax.devices()[0]
    hw = {
        "jax_backend": jax.default_backend(),
        "jax_device": f"{dev.platform}: {getattr(dev, 'device_kind', str(dev))}",
        "jax_version": jax.__version__,
        "cpu": f"{cpu_name()} ({os.cpu_count()} logical cores)",
        "python": platform.python_version(),
    }
    if torch is not None:
        device = torch_device(torch)
        hw["torch_device"] = (
            f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        )
        hw["torch_version"] = torch.__version__
    return hw


def command_line(module: str, argv: Sequence[str]) -> str:
    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in argv)])


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def time_repeats(run: Callable[[], Any], repeats: int, sync: Callable[[Any], Any]) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``run``; each ends with ``sync(result)`` (results ready)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        sync(out)
        times.append(time.perf_counter() - t0)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def fmt(x: Any, digits: int = 0) -> str:
    """Numbers with thousands separators; None as n/a; strings unchanged."""
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and digits == 0 and abs(x) < 100:
        digits = 2 if abs(x) >= 1 else 3
    return f"{x:,.{digits}f}"


def markdown_table(columns: Sequence[tuple[str, str, int]], rows: Sequence[dict]) -> str:
    """``columns``: (header, row key, digits). Missing keys read n/a."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k), d) for _, k, d in columns) + " |")
    return "\n".join(lines)


def report(
    *,
    title: str,
    module: str,
    argv: Sequence[str],
    hw: dict,
    config: dict,
    columns: Sequence[tuple[str, str, int]],
    rows: Sequence[dict],
    notes: Sequence[str],
    json_path: Optional[str],
    extra: Optional[dict] = None,
    extra_md: str = "",
) -> dict:
    """Print the Markdown report and write the JSON one; returns the JSON document."""
    doc = {
        "benchmark": module,
        "title": title,
        "date": now(),
        "command": command_line(module, argv),
        "hardware": hw,
        "config": config,
        "rows": list(rows),
        "notes": list(notes),
        **(extra or {}),
    }
    out = [f"## {title}", "", f"- date: {doc['date']}", f"- command: `{doc['command']}`"]
    out += [f"- {k}: {v}" for k, v in hw.items()]
    out += [f"- config: {json.dumps(config, sort_keys=True)}", "", markdown_table(columns, rows), ""]
    out += [f"- {n}" for n in notes]
    if extra_md:
        out += ["", extra_md]
    print("\n".join(out), flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=2, default=str)
        print(f"\nwrote {json_path}", file=sys.stderr)
    return doc


def jit_cache_size(fn) -> Optional[int]:
    """Compiled-executable count of a ``jax.jit`` function (None if this jax does not expose it)."""
    try:
        return int(fn._cache_size())
    except Exception:  # pragma: no cover - private API
        return None


def parse_names(parser, text: str, known, what: str = "variant") -> list:
    """Comma-separated names from ``known``, in order; ``parser.error`` (exit 2) for an unknown one or none."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in known]
    if bad or not names:
        parser.error(f"unknown {what}(s) {bad}; choose from {', '.join(known)}")
    return names
