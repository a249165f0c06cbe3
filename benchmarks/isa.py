"""What the CPU's vector ISA costs: benchmarks/throughput.py with AVX-512 allowed and forbidden, side by side.

    python benchmarks/isa.py [--isa native avx2] [--rounds 2] [-- <throughput.py arguments>]

Why: an AVX2-only AMD EPYC once took 2.9x this project's AVX-512 machines' time for the CPU default,
and the evaluation issue asked for the 15-minute budget "on the slower one (AVX2-only)". No AVX2-only
machine is at hand, but every library torch computes with here can be told to stop at an ISA:
``ATEN_CPU_CAPABILITY`` (torch's own kernels, the value ``torch.backends.cpu.get_cpu_capability()``
reports), ``ONEDNN_MAX_CPU_ISA`` (convolutions) and ``MKL_ENABLE_INSTRUCTIONS`` (matrix products).
This script runs throughput.py once per setting, in fresh processes, alternately for ``--rounds``
rounds (so the machine's background load hits every setting alike), and prints per (workload, method)
the pipeline's images/s (the loop's own ``train_step``) and the per-epoch monitor's seconds (kNN, and
the converged probe's L-BFGS fit in float64) under each setting, with the ratio to the first.

What it cannot tell: an AVX2-only *CPU* differs from this one in more than its ISA (core generation,
clock, caches, whether the two vCPUs are one core's two hyper-threads). A ratio near 1 here says the ISA
is not what made the other machine slow; it does not time that machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each setting caps torch's kernels, oneDNN and MKL at one ISA; "native" leaves all three to the CPU.
ISA_ENV: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
    "sse4": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    },
}
DEFAULT_ARGS = [
    *("--workloads", "params", "--methods", "cecl", "ce", "--windows", "3", "--window-seconds", "2"),
    *("--warmup", "3", "--probe-repeats", "3"),
]
ROWS = (
    ("pipeline", "images/s"),
    ("probe_s_per_epoch", "kNN monitor s"),
    ("probe_fit_s_per_epoch", "probe monitor s"),
)


def run(isa: str, args: list[str], out: Path) -> dict:
    """One throughput.py run with torch, oneDNN and MKL capped at ``isa``; its JSON results."""
    env = {**os.environ, **ISA_ENV[isa]}
    command = [sys.executable, "benchmarks/throughput.py", *args, "--json", str(out)]
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", nargs="+", choices=list(ISA_ENV), default=["native", "avx2"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("rest", nargs="*", help="throughput.py arguments (after --)")
    args = parser.parse_args()
    bench_args = args.rest or DEFAULT_ARGS
    results: dict[str, list[dict]] = {isa: [] for isa in args.isa}
    with tempfile.TemporaryDirectory(prefix="cecl-isa-") as tmp:
        for round_ in range(args.rounds):
            for isa in args.isa:
                results[isa].append(run(isa, bench_args, Path(tmp) / f"{isa}-{round_}.json"))
    for isa in args.isa:
        machine = results[isa][0].get("machine", {})
        capped = ISA_ENV[isa] or "no cap"
        print(f"{isa}: {capped}; the machine as torch saw it: {json.dumps(machine, default=str)}")
    print(f"{args.rounds} alternating rounds of benchmarks/throughput.py {' '.join(bench_args)}; medians")

    def median(isa: str, workload: str, method: str, field: str) -> float:
        values = [
            e[field]
            for r in results[isa]
            for e in r["summary"]
            if (e["workload"], e["method"]) == (workload, method) and e.get(field)
        ]
        return statistics.median(values) if values else float("nan")

    first = args.isa[0]
    header = "".join(f"{isa:>12}" + (f"{isa + '/' + first:>14}" if isa != first else "") for isa in args.isa)
    print(f"{'workload':10} {'method':8} {'figure':16}{header}")
    for entry in results[first][0]["summary"]:
        workload, method = entry["workload"], entry["method"]
        for field, label in ROWS:
            base = median(first, workload, method, field)
            cells = ""
            for isa in args.isa:
                value = median(isa, workload, method, field)
                cells += f"{value:12.2f}" + (f"{value / base:14.2f}" if isa != first else "")
            print(f"{workload:10} {method:8} {label:16}{cells}")


if __name__ == "__main__":
    main()
