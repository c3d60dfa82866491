"""A static performance model of the CUDA kernels from their SASS, for machines without a GPU.

Disassembles the built extension (`cuobjdump -sass`, `-res-usage`, `-elf` for the launch bounds)
and reports per kernel: registers, shared memory, spills (LOCAL/STACK bytes, LDL/STL in the main
loop), occupancy on the SM, the instruction mix of the main loop and the predicted fraction of the
FP32 (FP64 for double kernels) issue peak on that SM; for the 8-bit kernels, whose work is the byte
SAD VABSDIFF4 (4 taps, accumulate included), the fraction of issue slots that are VABSDIFF4.

The model (sm_80/sm_90: 4 sub-partitions per SM, each issuing one warp instruction per cycle and
executing one FP32 warp instruction per cycle, FP64 at half that rate; shared memory delivers
128 bytes per cycle to the SM):
  main loop   = the loop (a backward branch) whose body holds the most useful instructions (FP,
                or VABSDIFF4); its body is counted once, as written (inner loops once per trip,
                not per iteration)
  cycles/trip = max(instructions, FP64 instructions * 2, shared bytes * 4 sub-partitions / 128)
  fraction    = useful instructions (FADD/FFMA/FMUL/FMNMX, DADD/DFMA/DMUL * 2, VABSDIFF4) / cycles
                (VABSDIFF4 counted at one per issue slot: its pipe's rate is not documented, so
                for the 8-bit kernels the fraction is of issue, an upper bound)
It ignores latency (occupancy says how much of it can be hidden), global memory and bank
conflicts: an upper bound of the main loop's issue efficiency, useful to compare kernels and
revisions, not a measurement.

    python -m benchmarks.sass_report                        # table of addernet_cuda/_C*.so
    python -m benchmarks.sass_report --json out.json        # also write the numbers
    python -m benchmarks.sass_report --check benchmarks/results/sass_sm90.json
      # exit 1 if a main loop spills or a kernel's fraction fell > 10% below the committed one
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTR = re.compile(
    r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)([^;]*);"
)
FP32 = {"FADD", "FFMA", "FMUL", "FMNMX"}  # FP32 arithmetic (FSETP/FSEL count as "FP other")
FP64 = {"DADD", "DFMA", "DMUL"}
SAD = {"VABSDIFF4"}  # byte SAD of two 32-bit words (4 taps), with the accumulation
INTEGER = {"IMAD", "IADD3", "LOP3", "SHF", "LEA", "ISETP", "IMNMX", "IABS", "SEL", "SGXT", "IADD"}
GLOBAL_LOADS = {"LDG", "LD", "LDGSTS"}
CATEGORIES = ["FADD", "FFMA", "VABSDIFF4", "FP other", "LDS", "LDG", "integer", "other"]
# Per SM: registers, threads, blocks, shared memory (bytes) and the per-block reservation.
SM_LIMITS = {
    "sm_80": dict(regs=65536, threads=2048, blocks=32, smem=167936, reserved=1024),
    "sm_90": dict(regs=65536, threads=2048, blocks=32, smem=233472, reserved=1024),
}


@dataclass
class Kernel:
    name: str
    arch: str
    registers: int = 0
    shared: int = 0
    local: int = 0
    stack: int = 0
    threads: int = 256
    instructions: list = field(default_factory=list)  # (address, opcode, modifiers)


def find_tool(name):
    """cuobjdump/nvdisasm from PATH, CUDA_HOME or the nvidia-cuda-* wheels next to torch."""
    found = shutil.which(name)
    if found:
        return found
    candidates = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", name)]
    for base in sys.path:
        candidates += glob.glob(os.path.join(base, "nvidia", "cu*", "bin", name))
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    raise SystemExit(
        f"sass_report: {name} not found (pip install nvidia-cuda-cuobjdump "
        "nvidia-cuda-nvdisasm, see requirements.txt)"
    )


def default_binary(root=ROOT):
    """The built extension holding the CUDA kernels: addernet_cuda/_C_cuda*.so where the CUDA
    kernels are a separate extension, else addernet_cuda/_C*.so; None if neither exists."""
    for pattern in ("_C_cuda*.so", "_C*.so"):
        found = sorted(glob.glob(os.path.join(root, "addernet_cuda", pattern)))
        if found:
            return found[0]
    return None


def cuobjdump(args, path):
    tool = find_tool("cuobjdump")
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(find_tool("nvdisasm")) + os.pathsep + env.get("PATH", "")
    out = subprocess.run([tool, *args, path], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"sass_report: cuobjdump {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def parse(path):
    """Kernels of every arch in the binary, keyed (arch, mangled name)."""
    kernels = {}

    def kernel(arch, name):
        return kernels.setdefault((arch, name), Kernel(name, arch))

    arch = None
    current = None
    for line in cuobjdump(["-res-usage"], path).splitlines():
        if m := re.match(r"\s*arch = (sm_\d+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function (\S+):", line):
            current = kernel(arch, m.group(1))
        elif current is not None and "REG:" in line:
            usage = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line))
            current.registers, current.shared = int(usage["REG"]), int(usage["SHARED"])
            current.local, current.stack = int(usage["LOCAL"]), int(usage["STACK"])
    arch = current = None
    want_value = False
    for line in cuobjdump(["-elf"], path).splitlines():
        if m := re.match(r"\s*arch = (sm_\d+)", line):
            arch = m.group(1)
        elif m := re.match(r"\.nv\.info\.(\S+)", line):
            current = kernels.get((arch, m.group(1)))
        elif "EIATTR_MAX_THREADS" in line or "EIATTR_REQNTID" in line:
            want_value = current is not None
        elif want_value and "Value:" in line:
            current.threads = int(line.split("Value:")[1].split()[0], 16)
            want_value = False
    arch = current = None
    for line in cuobjdump(["-sass"], path).splitlines():
        if m := re.match(r"\s*arch = (sm_\d+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function : (\S+)", line):
            current = kernel(arch, m.group(1))
        elif current is not None and (m := INSTR.search(line)):
            current.instructions.append((int(m.group(1), 16), m.group(2), m.group(3), m.group(4)))
    return kernels


def main_loop(instructions):
    """The main loop: of the loops (a backward branch's target .. the branch) holding at least
    half of the most useful (FP or VABSDIFF4) instructions any loop holds, the shortest (the innermost hot loop, not
    the loops around it); the whole function when there is no loop."""
    index = {addr: i for i, (addr, *_rest) in enumerate(instructions)}
    loops = []
    for i, (addr, op, _mods, operands) in enumerate(instructions):
        target = re.search(r"0x([0-9a-f]+)", operands) if op == "BRA" else None
        if target and int(target.group(1), 16) <= addr and int(target.group(1), 16) in index:
            body = instructions[index[int(target.group(1), 16)] : i + 1]
            useful = sum(op in FP32 or op in FP64 or op in SAD for _, op, _, _ in body)
            loops.append((useful, body))
    if not loops:
        return instructions
    most = max(fp for fp, _ in loops)
    return min((body for fp, body in loops if fp >= most / 2), key=len)


def classify(op, mods):
    if op in ("FADD", "FFMA", "LDS") or op in SAD:
        return op
    if op in FP32 or op in FP64 or op in ("FSETP", "FSEL", "DSETP"):
        return "FP other"
    if op in GLOBAL_LOADS:
        return "LDG"
    if op in INTEGER:
        return "integer"
    return "other"


def lds_bytes(mods):
    for tag, size in ((".128", 16), (".64", 8), ("8", 1), ("16", 2)):
        if tag in mods:
            return size
    return 4


def model(k: Kernel):
    body = main_loop(k.instructions)
    counts = dict.fromkeys(CATEGORIES, 0)
    shared = fp32 = fp64 = sad = spills = 0
    for _, op, mods, _ in body:
        counts[classify(op, mods)] += 1
        fp32 += op in FP32
        fp64 += op in FP64
        sad += op in SAD
        shared += lds_bytes(mods) if op == "LDS" else 0
        spills += op in ("LDL", "STL")
    n = len(body)
    # shared: bytes per thread; a warp moves 32x that, 4 sub-partitions share 128 B/cycle
    cycles = max(n, 2 * fp64, shared * 32 * 4 / 128)
    fraction = (fp32 + 2 * fp64 + sad) / cycles if cycles else 0.0
    return dict(
        kernel=short_name(k.name),
        arch=k.arch,
        registers=k.registers,
        shared=k.shared,
        local=k.local + k.stack,
        threads=k.threads,
        occupancy=occupancy(k),
        loop_instructions=n,
        mix=counts,
        loop_spills=spills,
        fp_unit="fp64" if fp64 > fp32 else ("vabsdiff4" if sad > fp32 else "fp32"),
        predicted_fraction=round(fraction, 3),
    )


def occupancy(k: Kernel):
    """Resident warps per SM / 64 from registers (256-register warp granules), shared memory,
    threads per block (the launch bound, or 256) and the block limit."""
    lim = SM_LIMITS.get(k.arch, SM_LIMITS["sm_90"])
    warps = (k.threads + 31) // 32
    regs_per_warp = (k.registers * 32 + 255) // 256 * 256
    by_regs = lim["regs"] // max(1, regs_per_warp * warps)
    by_smem = lim["smem"] // (k.shared + lim["reserved"]) if k.shared else lim["blocks"]
    blocks = min(by_regs, by_smem, lim["threads"] // (warps * 32), lim["blocks"])
    return round(blocks * warps / (lim["threads"] // 32), 3)


def short_name(mangled):
    try:
        name = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        return mangled
    name = re.sub(r"addernet::cuda::(\(anonymous namespace\)::)?", "", name)
    name = name.replace("c10::", "").replace("(anonymous namespace)::", "")
    return re.sub(r"\(.*\)$", "", name)


def markdown(rows):
    cols = ["kernel", "regs", "shared B", "local B", "threads", "occupancy", "loop instr"]
    cols += CATEGORIES + ["loop spills", "predicted fraction of peak"]
    head = "| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|\n"
    lines = [
        f"| `{r['kernel']}` | {r['registers']} | {r['shared']} | {r['local']} | {r['threads']} "
        f"| {r['occupancy']:.0%} | {r['loop_instructions']} | "
        + " | ".join(str(r["mix"][c]) for c in CATEGORIES)
        + f" | {r['loop_spills']} | {r['predicted_fraction']:.0%} {r['fp_unit']} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def check(rows, committed, tolerance):
    """Failures: spills (local memory, LDL/STL in a main loop) in any row, or a fraction more than
    `tolerance` (relative) below the committed rows' for the same arch and kernel."""
    committed = {(r["arch"], r["kernel"]): r for r in committed}
    failures = []
    for r in rows:
        if r["loop_spills"] or r["local"]:
            failures.append(
                f"{r['kernel']} ({r['arch']}): spills ({r['local']} B local memory, "
                f"{r['loop_spills']} LDL/STL in the main loop)"
            )
        old = committed.get((r["arch"], r["kernel"]))
        if old and r["predicted_fraction"] < old["predicted_fraction"] * (1 - tolerance):
            failures.append(
                f"{r['kernel']} ({r['arch']}): predicted fraction "
                f"{r['predicted_fraction']:.3f} < committed "
                f"{old['predicted_fraction']:.3f} - {tolerance:.0%}"
            )
    return failures


def nvcc_version():
    nvcc = shutil.which("nvcc") or os.path.join(
        os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"
    )
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    m = re.search(r"release ([\d.]+), (V[\d.]+)", out)
    return f"{m.group(1)} ({m.group(2)})" if m else "unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", help="the extension or object (default: addernet_cuda/_C*.so)")
    ap.add_argument("--arch", default="sm_90", help="the SM to report (default sm_90)")
    ap.add_argument("--json", help="write the rows to this JSON file")
    ap.add_argument("--check", help="committed JSON to compare against (exit 1 on a failure)")
    ap.add_argument("--tolerance", type=float, default=0.10)
    args = ap.parse_args(argv)
    binary = args.binary or default_binary()
    if binary is None:
        raise SystemExit("sass_report: no addernet_cuda/_C*.so: build the extension first")
    kernels = parse(binary)
    every = sorted(
        (model(k) for k in kernels.values() if k.instructions),
        key=lambda r: (r["arch"], r["kernel"]),
    )
    rows = [r for r in every if r["arch"] == args.arch]
    if not rows:
        raise SystemExit(f"sass_report: no {args.arch} kernels in {binary} (a CPU-only build?)")
    print(f"SASS model, {args.arch}, nvcc {nvcc_version()}, {os.path.basename(binary)}\n")
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "nvcc": nvcc_version(), "kernels": rows}, f, indent=1)
    if args.check:
        with open(args.check) as f:
            failures = check(every, json.load(f)["kernels"], args.tolerance)
        for failure in failures:
            print("FAIL", failure)
        if failures:
            return 1
        print(
            f"sass check: {len(every)} kernels, no spills, no fraction more than "
            f"{args.tolerance:.0%} below {os.path.relpath(args.check, ROOT)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
