"""What the machine was doing while a benchmark ran: CPU count, usable cores, load average; robust summaries.

A speed figure from a shared machine means little without the load beside it. The benchmarks record
:func:`snapshot` before every timed run and print :func:`load_line` under their tables, with a warning
(:func:`load_warning`) when other work competed for the cores: the absolute figures are then lower bounds, and even
ratios taken in alternating rounds drift when the load changes within a round.
"""
from __future__ import annotations

import os
import platform
import statistics
import time


def usable_cores() -> int:
    from kkoma.offline.transcribe import usable_cores as cores

    return cores()


def snapshot() -> dict:
    """The 1-, 5- and 15-minute load averages and the time [s since the epoch]."""
    one, five, fifteen = os.getloadavg()
    return {"time": time.time(), "load1": one, "load5": five, "load15": fifteen}


def machine() -> dict:
    return {"cpus": os.cpu_count() or 1, "usable_cores": usable_cores(), "processor": platform.processor() or
            platform.machine(), "python": platform.python_version(), "started": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                              time.gmtime())}


def spread(values) -> dict:
    """Median, minimum and maximum of a list of figures."""
    v = sorted(values)
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "n": len(v)} if v else {}


def fmt_spread(s: dict, digits: int = 1) -> str:
    """``"172.3 (150.1-180.4)"``: median, then the range."""
    if not s:
        return "-"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def load_line(snaps: list[dict], cores: int | None = None) -> str:
    cores = cores or usable_cores()
    ones = [s["load1"] for s in snaps]
    return (f"machine: {os.cpu_count()} CPUs, {cores} usable by this run; 1-min load average before the timed runs: "
            f"median {statistics.median(ones):.2f}, range {min(ones):.2f}-{max(ones):.2f} ({len(ones)} readings)")


def load_warning(snaps: list[dict], cores: int | None = None, ours: float = 1.0) -> str | None:
    """A warning when other work competed for the cores, else None.

    The 1-minute load average read just before a timed run still counts the benchmark's own previous run (about
    ``ours`` busy threads, fading with a one-minute time constant), so "too high" is above ``cores + ours`` at the
    median reading: every core had other work on it for most of the benchmark.
    """
    cores = cores or usable_cores()
    ones = [s["load1"] for s in snaps]
    if not ones:
        return None
    med = statistics.median(ones)
    if med > cores + ours:
        return (f"WARNING: the machine was busy with other work (median 1-min load {med:.1f} on {cores} cores, "
                f"above {cores + ours:.0f}): the speeds are lower bounds and their ranges wide; the ratios, taken "
                "in alternating rounds, hold better but not exactly. Re-run on a quiet machine to quote them.")
    if max(ones) > cores + ours:
        return (f"note: the load rose above {cores + ours:.0f} during part of the run (max {max(ones):.1f}); "
                "quote the median and the range, not one run.")
    return None


def finish_report(lines: list[str], snaps: list[dict], *, title: str, command: str, out=None,
                  cores: int | None = None, note: str = "") -> str:
    """Close a benchmark's report: the load line and any warning under ``lines``; print it, and write it as Markdown
    under ``title`` with the ``command`` that made it to ``out`` (a path, or None). Returns the text."""
    lines = [*lines, load_line(snaps, cores)]
    warning = load_warning(snaps, cores)
    if warning:
        lines.append(warning)
    text = "\n".join(lines)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"# {title}\n\n`{command.strip()}`{note}\n\n{text}\n")
    return text
