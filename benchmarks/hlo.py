"""Reads XLA's optimised HLO text: while-loop bodies, op counts by kind, copies, bytes touched.

Load-independent evidence for the decode benchmarks: what one decode step executes, read from
the compiled program (`jax.jit(...).lower(...).compile().as_text()` or an `--xla_dump_to` file).

    loops = while_loops(hlo_text)          # every while loop, outermost first
    stats = body_stats(hlo_text, loop)     # op counts of one iteration of its body

`body_stats` counts the body's top-level instructions by opcode, fusions by kind, and recursively
the sorts, nested loops, conditionals and copies reachable from it (a nested loop's body is
counted once, times its known trip count when XLA knows it). `touched_bytes` sums the output and
operand bytes of the top-level instructions (fusions, copies, custom calls; an in-place
dynamic-update-slice counts its update twice, not its buffer): the memory traffic of one
iteration if nothing stayed in cache, roughly as XLA's cost analysis estimates it.
"""

from __future__ import annotations

import collections
import dataclasses
import re

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_INSTR = re.compile(r"^(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")
_ARRAY = re.compile(r"\b(pred|[subf]\d+|bf16|c64|c128)\[([\d,]*)\]")


@dataclasses.dataclass
class Instr:
    name: str
    shape: str
    op: str
    rest: str

    def attr(self, key: str) -> str | None:
        m = re.search(key + r"=%?([\w.\-]+)", self.rest)
        return m.group(1) if m else None

    def called(self) -> list[str]:
        names = re.findall(r"(?:calls|body|condition|to_apply|branch_computations)="
                           r"\{?([%\w.\-, ]+)\}?", self.rest)
        return [n.strip().lstrip("%") for group in names for n in group.split(",") if n.strip()]


def shape_bytes(shape: str) -> int:
    """Bytes of every array in an HLO shape string (tuples summed)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _DTYPE_BYTES.get(dtype, 4)
    return total


def computations(hlo: str) -> dict[str, list[Instr]]:
    """Computation name -> its instructions."""
    comps: dict[str, list[Instr]] = {}
    cur = None
    for line in hlo.splitlines():
        if not line.startswith(" "):
            m = _HEADER.match(line)
            cur = m.group(1) if m else None
            if cur is not None:
                comps[cur] = []
            continue
        m = _INSTR.match(line.strip())
        if cur is not None and m:
            comps[cur].append(Instr(*m.groups()))
    return comps


def while_loops(hlo: str) -> list[Instr]:
    """Every `while` instruction of the module."""
    return [i for instrs in computations(hlo).values() for i in instrs if i.op == "while"]


def trip_count(loop: Instr) -> int | None:
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', loop.rest)
    return int(m.group(1)) if m else None


def body_stats(hlo: str, loop: Instr) -> dict:
    """Counts for one iteration of `loop`'s body (see the module docstring)."""
    comps = computations(hlo)
    body = comps[loop.attr("body")]
    shapes = {i.name: i.shape for i in body}
    ops = collections.Counter(i.op for i in body)
    kinds = collections.Counter(i.attr("kind") for i in body if i.op == "fusion")
    touched = 0
    for i in body:
        if i.op in ("parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while",
                    "conditional", "call"):
            continue
        operands = [shapes.get(o, "") for o in re.findall(r"%([\w.\-]+)", i.rest.split("),")[0])]
        if "dynamic-update-slice" in i.name and i.shape in operands:
            # in place: the buffer is neither read nor written whole, only the update is
            operands.remove(i.shape)
            touched += 2 * sum(map(shape_bytes, operands))
            continue
        touched += shape_bytes(i.shape) + sum(map(shape_bytes, operands))
    deep = collections.Counter()
    copies: list[tuple[str, int]] = []

    def walk(name: str, weight: int, seen: tuple[str, ...]) -> None:
        for i in comps.get(name, []):
            if i.op in ("sort", "while", "conditional", "copy", "custom-call"):
                deep[i.op] += weight
            if i.op == "copy" or (i.op == "fusion" and "copy" in i.name):
                copies.append((i.shape, shape_bytes(i.shape) * weight))
            for callee in i.called():
                if callee in seen:
                    continue
                trips = (trip_count(i) or 1) if i.op == "while" else 1
                walk(callee, weight * trips, (*seen, callee))

    walk(loop.attr("body"), 1, (loop.attr("body"),))
    return {
        "instructions": sum(ops.values()),
        "by_op": dict(ops.most_common()),
        "fusions_by_kind": dict(kinds.most_common()),
        "nested": {k: deep[k] for k in ("sort", "while", "conditional", "custom-call")},
        "copies": len(copies),
        "copy_bytes": sum(b for _, b in copies),
        "largest_copies": sorted(copies, key=lambda c: -c[1])[:4],
        "touched_bytes": touched,
    }


def decode_loops(hlo: str, vocab: int) -> list[Instr]:
    """The loops whose body computes (rows, vocab) logits with a dot: the decode steps."""
    comps = computations(hlo)
    logits = re.compile(rf"^f32\[\d+,{vocab}\]")

    def is_head(i: Instr) -> bool:
        if not logits.match(i.shape):
            return False
        return i.op == "dot" or (i.op == "fusion" and any(
            j.op == "dot" for j in comps.get(i.attr("calls") or "", [])))

    return [w for w in while_loops(hlo) if any(map(is_head, comps[w.attr("body")]))]
