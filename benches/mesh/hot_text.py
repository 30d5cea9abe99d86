"""The hot-text layout of the vakt binary, profiled by the mesh benchmark (`benches/mesh/run
--hot-text`, which runs mesh.py with `--hot-text benches/mesh/hot-text.ld`).

Why: nearly all of a sidecar's file-backed memory is its own code, and without a layout nearly
all of it is resident. A sidecar executes ~4 MB of the binary's ~10 MB of code, but those
functions lie spread over the whole of `.text`, and the kernel maps 64 KB around every page a
process faults in (fault-around). So the binary's whole code ends up in every sidecar's RSS.

What: both sidecars run under callgrind (start-up, warm-up, the enforcement checks, then load),
and every function of the vakt binary that executed at least one instruction is listed,
hottest first, in a linker script (benches/mesh/hot-text.ld). `scripts/build-release` has
build.rs give it to the linker for the release `vakt` binary (the image and the mesh benchmark
build that way); the listed functions go into one `.text.hot` output section in front of
`.text`. The rest of the code stays on disk until something calls it.

A function is listed by its section, `.text.<symbol>`, or `.text.unlikely.<symbol>` where LLVM
judged it cold. Assembly (aws-lc's SHA, AES-GCM, bignum and curve code) has no section per
function: its object's whole `.text` is listed instead, by the object's name in its `-sys`
crate's archive (`*:*-sha256-x86_64.o(.text)`).

Functions are named as Rust's v0 mangling names them (`scripts/build-release` asks for it): a
generic function's name includes its type arguments, so only the instantiations that ran are
listed. (The legacy mangling tells instantiations apart by a hash alone; listing a function by
its name without the hash listed every instantiation: 5.9 MB of "hot" code for 4 MB that ran.)

The script is independent of the build: a crate's disambiguator (`Cs<hash>_`), a back-reference
into the name (`B<offset>_`: its offsets move when a disambiguator's length does), a legacy
symbol's hash (`17h<hash>E`), the compiler's `.1234` suffix of local symbols and the aws-lc
version in its symbols (`aws_lc_0_47_0_`) are all wildcards, so a build with other features or
dependency versions still matches. A function that was renamed, or one that is new, lands in
`.text` as before: the layout ages gracefully, and the mesh benchmark reports how much code a
build's hot section holds.
"""

from __future__ import annotations

import collections
import re
import subprocess
import time
from pathlib import Path

# the parts of a symbol that change from build to build
_LEGACY_HASH = re.compile(r"17h[0-9a-f]{16}E")
_V0_CRATE_DISAMBIGUATOR = re.compile(r"Cs[0-9A-Za-z]*_(?=[0-9])")
_V0_BACKREF = re.compile(r"B[0-9A-Za-z]*_")
_LOCAL_SUFFIX = re.compile(r"(\.llvm\.[0-9]+|\.[0-9]+)+$")
_AWS_LC_VERSION = re.compile(r"aws_lc_[0-9]+_[0-9]+_[0-9]+_")
# what lld's and GNU ld's script lexers take as one bare token in an input-section pattern
_SAFE = re.compile(r"^[A-Za-z0-9_.$*-]+$")
# the build-specific prefix cc gives an object in a -sys crate's archive (`6cca901d1d9807b8-`)
_OBJECT_PREFIX = re.compile(r"^[0-9a-f]{16}-")

OUTPUT_SECTION = ".text.hot"


def executed_functions(dumps: list[Path], symbols: dict[str, int]) -> collections.Counter:
    """Self instructions per function of a binary (`symbols`: its function symbols), summed over
    callgrind output files written with `--demangle=no` (so the names are the symbol table's).
    Functions are told apart by name, not by callgrind's object: it names the binary's object
    `???` in some runs."""
    cost: collections.Counter = collections.Counter()
    for dump in dumps:
        functions: dict[str, str] = {}
        fn = None
        skip_call_cost = False
        for line in dump.read_text(errors="replace").splitlines():
            if skip_call_cost:  # the line after `calls=` is the callee's inclusive cost
                skip_call_cost = False
                continue
            m = re.match(r"^(c?ob|c?fn|c?fi|c?fe|fl)=\((\d+)\)(?: (.*))?$", line)
            if m:
                kind, ident, name = m.groups()
                if kind.endswith("fn") and name is not None:
                    functions[ident] = name
                if kind == "fn":
                    fn = functions.get(ident)
                continue
            if line.startswith("calls="):
                skip_call_cost = True
                continue
            if fn and line[:1] and (line[0].isdigit() or line[0] in "+-*"):
                fields = line.split()
                if len(fields) >= 2:
                    cost[re.sub(r"'\d+$", "", fn)] += int(fields[1])
    return collections.Counter({f: c for f, c in cost.items() if c > 0 and f in symbols})


def pattern(symbol: str) -> str | None:
    """The build-independent name of a function symbol (a glob), or None if it has none."""
    name, suffixed = _LOCAL_SUFFIX.subn("", symbol)
    name = _LEGACY_HASH.sub("17h*E", name)
    if name.startswith("_R"):
        name = _V0_CRATE_DISAMBIGUATOR.sub("Cs*_", name)
        name = _V0_BACKREF.sub("B*_", name)
    name = _AWS_LC_VERSION.sub("aws_lc_*_", name)
    if suffixed:
        name += "*"
    return name if _SAFE.match(name) else None


def native_objects(deps: Path) -> dict[str, str]:
    """Symbol -> object name (build prefix removed) for the native code bundled in the `-sys`
    crates' archives under `deps` (target/release/deps)."""
    objects = {}
    for archive in sorted(deps.glob("lib*_sys-*.rlib")):
        # the archive's Rust metadata and bitcode are not objects: nm complains and goes on
        out = subprocess.run(["nm", "-A", "--defined-only", str(archive)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            fields = line.split()
            # `<archive>:<object>:<address> T <symbol>`
            if len(fields) == 3 and fields[1] in "tT" and fields[0].count(":") == 2:
                member = fields[0].split(":")[1]
                objects[fields[2]] = _OBJECT_PREFIX.sub("", member)
    return objects


def linker_script(cost: collections.Counter, hot_bytes: int, objects: dict[str, str], source: str) -> str:
    lines: list[str] = []
    seen: set[str] = set()
    for symbol, _ in cost.most_common():
        name = pattern(symbol)
        if name and name not in seen:
            seen.add(name)
            lines.append(f"*(.text.{name} .text.unlikely.{name})")
        obj = objects.get(symbol)
        if obj and _SAFE.match(obj) and obj not in seen:
            seen.add(obj)
            lines.append(f"*:*-{obj}(.text)")
    header = [
        "/* The hot-text layout of the vakt binary: GENERATED, do not edit by hand.",
        " *",
        " * Regenerate with `benches/mesh/run --hot-text` (see benches/mesh/hot_text.py for why",
        " * and how). `scripts/build-release` links the release binary with it; a plain",
        " * `cargo build --release` does not.",
        " *",
        f" * Profiled {time.strftime('%Y-%m-%d', time.gmtime())} from {source}:",
        f" * {len(cost)} functions executed, {hot_bytes / 2**20:.2f} MB of code, hottest first;",
        f" * {len(lines)} patterns.",
        " */",
        "SECTIONS",
        "{",
        f"  {OUTPUT_SECTION} :",
        "  {",
    ]
    body = [f"    {line}" for line in lines]
    footer = ["  }", "}", "INSERT BEFORE .text;", ""]
    return "\n".join(header + body + footer)


def symbol_sizes(binary: Path) -> dict[str, int]:
    out = subprocess.run(["nm", "-S", "--defined-only", str(binary)], check=True,
                         capture_output=True, text=True).stdout
    sizes = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in "tTwW":
            sizes[fields[3]] = int(fields[1], 16)
    return sizes


def write(dumps: list[Path], binary: Path, out: Path) -> str:
    """Writes the linker script for `binary` from callgrind dumps of its sidecars; returns a
    one-line summary."""
    sizes = symbol_sizes(binary)
    cost = executed_functions(dumps, sizes)
    if not cost:
        raise RuntimeError(f"no function of {binary} in the callgrind dumps {dumps}")
    hot = sum(sizes[s] for s in cost)
    objects = native_objects(binary.parent / "deps")
    if not objects:
        # Without them the assembly (SHA-256, AES-GCM, bignum) would silently stay out of the
        # hot text: profile the binary where cargo built it, beside its `deps/`.
        raise RuntimeError(f"no native objects in {binary.parent / 'deps'}/lib*_sys-*.rlib: "
                           f"profile a binary in its cargo target directory (target/release/vakt)")
    out.write_text(linker_script(cost, hot, objects, f"{len(dumps)} callgrind dumps of both sidecars"))
    return (f"{len(cost)} functions executed ({hot / 2**20:.2f} MB of {sum(sizes.values()) / 2**20:.2f} MB "
            f"of code); wrote {out}")


def hot_section(binary: Path) -> tuple[int, int]:
    """Sizes in bytes of the binary's `.text.hot` and `.text` sections (0 if absent)."""
    out = subprocess.run(["readelf", "-SW", str(binary)], check=True, capture_output=True, text=True).stdout
    sizes = {}
    for line in out.splitlines():
        m = re.match(r"^\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)", line)
        if m:
            sizes[m.group(1)] = int(m.group(2), 16)
    return sizes.get(OUTPUT_SECTION, 0), sizes.get(".text", 0)
