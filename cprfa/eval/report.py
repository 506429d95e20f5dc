"""``cprfa bench``: run the project's benchmarks and gather their tables and figures in one Markdown report.

Each benchmark is a script of the repository's ``benchmarks/`` folder (a source checkout; they read the data
sets that ``cprfa data build`` makes, README "Command line", and skip what is absent). The report holds, per
benchmark, the command that reproduces it, its output (Markdown tables), its run time, and the PNG figures it
wrote into the report's folder. A benchmark that fails is reported with the end of its error output and the
others still run. ``quick`` runs every benchmark on a handful of faces: a smoke test of the report, not figures
to quote.
"""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cprfa.errors import CprfaError

BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
DEFAULT_SETS = ("plain=/tmp/pgt", "occluded=/tmp/occ", "large-pose=/tmp/lp")


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    script: str
    arguments: tuple[str, ...]
    full: tuple[str, ...]  # sizes of the full run
    quick: tuple[str, ...]  # sizes of a ``quick`` run


def benchmarks(sets: tuple[str, ...], data: Path | None, figures: Path) -> list[Benchmark]:
    """What ``cprfa bench`` runs, in order."""
    detect_data = ("--data", str(data)) if data is not None else ()
    large_pose = [item.partition("=")[2] for item in sets if item.startswith("large-pose=")]
    plain = [item.partition("=")[2] for item in sets if item.startswith("plain=")]
    return [
        Benchmark("detection", "Face detection: recall, box fit and speed", "bench_detect.py",
                  (*detect_data, *(("--large-pose", large_pose[0]) if large_pose else ())), (), ("--limit", "40")),
        Benchmark("dafi", "DAFI estimation: the paper's Table 1 and the HS-U-Net's speed", "bench_dafi.py",
                  ("--sets", *sets), (), ("--limit", "12")),
        Benchmark("ablation", "The CPR aligner: the paper's ablation, NME by yaw bucket, CED curves, speed",
                  "bench_cpr.py", ("--figures", str(figures), "--sets", *sets), ("--faces", "200", "--limit", "100"),
                  ("--faces", "6", "--limit", "6")),
        Benchmark("end-to-end", "End to end on the helen_test photos, face detection included",
                  "bench_end_to_end.py", detect_data, (), ("--limit", "8")),
        Benchmark("speed", "End to end: speed per stage and memory", "bench_align.py", (), (), ("--repeats", "2")),
        Benchmark("tradeoffs", "Speed against accuracy: the options of cprfa align", "bench_tradeoffs.py", detect_data,
                  (), ("--limit", "4", "--repeats", "1")),
        Benchmark("video", "Videos of faces turning to profile: followed faces against the detector alone",
                  "bench_video.py", ("--data", plain[0]) if plain else (), (), ("--faces", "2", "--steps", "4")),
        Benchmark("roll", "Tilted faces: photos turned in the image plane", "bench_roll.py", detect_data, (),
                  ("--limit", "3", "--angles", "0", "90")),
    ]


def run_report(out: Path, sets: tuple[str, ...] = DEFAULT_SETS, data: Path | None = None, quick: bool = False,
               only: tuple[str, ...] = (), progress=print) -> bool:
    """Run the benchmarks (``only`` those named, if given) and write ``out/report.md``; True if all succeeded."""
    if not BENCHMARKS_DIR.is_dir():
        raise CprfaError(f"cprfa bench runs the scripts of the repository's benchmarks/ folder, not found at "
                         f"{BENCHMARKS_DIR} (install cprfa from a source checkout: pip install -e .)")
    out.mkdir(parents=True, exist_ok=True)
    chosen = [b for b in benchmarks(tuple(sets), data, out) if not only or b.name in only]
    lines = [f"# cprfa benchmark report{' (quick: a handful of faces, not figures to quote)' if quick else ''}",
             "", f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, Python {platform.python_version()}",
             ""]
    succeeded = True
    for benchmark in chosen:
        command = [sys.executable, str(BENCHMARKS_DIR / benchmark.script), *benchmark.arguments,
                   *(benchmark.quick if quick else benchmark.full)]
        shown = " ".join(["python", f"benchmarks/{benchmark.script}", *command[2:]])
        progress(f"{benchmark.name}: {shown}")
        before = {path: path.stat().st_mtime_ns for path in out.glob("*.png")}
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        lines += [f"## {benchmark.title}", "", f"`{shown}` ({seconds:.0f} s)", ""]
        if result.returncode:
            succeeded = False
            tail = "\n".join(result.stderr.strip().splitlines()[-12:])
            lines += [f"**Failed** (exit code {result.returncode}):", "", "```", tail, "```", ""]
            progress(f"{benchmark.name}: failed (exit code {result.returncode})")
        lines += [result.stdout.strip(), ""]
        written = [path for path in sorted(out.glob("*.png")) if before.get(path) != path.stat().st_mtime_ns]
        lines += [f"![{path.stem}]({path.name})" for path in written]
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    return succeeded
