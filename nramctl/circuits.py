"""Hand-wired circuits on the paper's 14 gates (see nramctl.program): Access, Increment and Copy, and two hard
tasks, Permutation and ListSearch, that show those tasks can be solved within their T(n) steps with R = 4;
and Permutation, ListSearch and Merge as phase-free circuits: one circuit that every step repeats, on a few
gates whose sequence comes several times a step (or on the circuit's own gates once, in the order it uses
them), with ListSearch stepping stones for `basin` that are not solutions; and ListSearch by halting
on a register's zero flag (LISTSEARCH_HALT) with its two stepping stones."""
from typing import NamedTuple, Optional

from .gates import PAPER_GATES

NOOP = {"READ": ["r0"], "WRITE": ["r0", "READ"]}          # rewrites a cell with its own value

ACCESS = (2, [
    # step 1 (all registers 0): r1 := mem[0] = k
    ({1: True}, {**NOOP, "r1": "READ"}),
    # then: cell 0 := mem[k], halt
    ({1: False}, {"READ": ["r1"], "WRITE": ["ZERO", "READ"], "stop": True}),
])

INCREMENT = (3, [
    # r0 = pointer, r1 = last value read, r2 = 'started' flag
    ({2: True}, {"READ": ["r0"], "INC": ["READ"], "WRITE": ["r0", "INC"], "ADD": ["r0", "ONE"],
                 "r0": "ADD", "r1": "READ", "r2": "ONE"}),
    ({1: False}, {"READ": ["r0"], "INC": ["READ"], "WRITE": ["r0", "INC"], "ADD": ["r0", "ONE"],
                  "r0": "ADD", "r1": "READ"}),
    # the last value read was NULL: the array is done; rewrite a cell unchanged and halt
    ({}, {**NOOP, "stop": True}),
])

COPY = (4, [
    # r0 = source, r1 = destination, r2 = p, r3 = elements left
    ({0: True, 1: True}, {"READ": ["r0"], "WRITE": ["r0", "READ"],
                          "r0": "ONE", "r1": "READ", "r2": "READ", "r3": "READ"}),
    ({3: False}, {"READ": ["r0"], "WRITE": ["r1", "READ"], "INC": ["r0"], "ADD": ["r1", "ONE"],
                  "SUB": ["r2", "INC"], "r0": "INC", "r1": "ADD", "r3": "SUB"}),
    ({}, {**NOOP, "stop": True}),
])

PERMUTATION = (4, [
    # r0 = a (A's address), r1 = p (into P), r2 = the address of A[P[i]], r3 = phase
    ({1: True}, {**NOOP, "r0": "READ", "r1": "ONE"}),                # r0 := mem[0] = a, p := 1
    ({3: True}, {"READ": ["r1"], "ADD": ["r0", "READ"], "WRITE": ["r1", "READ"],
                 "r2": "ADD", "r3": "ONE"}),                         # r2 := a + P[i]
    ({}, {"READ": ["r2"], "WRITE": ["r1", "READ"], "INC": ["r1"], "r1": "INC", "r3": "ZERO"}),   # P[i] := A[P[i]]
])

LISTSEARCH = (4, [
    # r0 = p (a node), r1 = v, r2 = p + 1 (its value's address; 0 between the two steps of a node),
    # r3 = 1 while v is fetched, then whether p's value is v
    ({0: True}, {**NOOP, "r0": "READ", "r3": "ONE"}),                 # p := head
    ({1: True}, {"READ": ["r3"], "WRITE": ["r3", "READ"], "INC": ["r0"],
                 "r1": "READ", "r2": "INC", "r3": "ZERO"}),          # v := mem[1]
    ({2: False}, {"READ": ["r2"], "WRITE": ["r2", "READ"], "EQ": ["READ", "r1"], "r2": "ZERO", "r3": "EQ"}),
    ({3: False}, {"READ": ["r0"], "WRITE": ["TWO", "r0"], "stop": True}),   # found: cell 2 := p
    ({}, {"READ": ["r0"], "WRITE": ["r0", "READ"], "INC": ["READ"], "r0": "READ", "r2": "INC"}),   # p := next
])

class Circuit(NamedTuple):
    R: int
    repeat: int                 # the gate sequence this many times a step
    min_M: Optional[int]        # the smallest M it solves the task's difficulty at (None: any M that holds it)
    rules: list
    gates: tuple = tuple(PAPER_GATES)


# Permutation as one circuit that every step repeats, with the gate sequence three times (model.repeat
# = 3: three READs a step), no phase and no zero flag: r0 is never written (so READ(r0) = mem[0] = a),
# r1 = the last cell of P written. Step k writes P[k] := A[P[k]]; the steps after the n-th write past P.
# It needs M >= 14 at lengths to 6: with T = 2n + 2 steps the writes then never wrap around to P.
PERMUTATION_UNIFORM = Circuit(4, 3, 14, [
    ({}, {"READ": ["r0"], "INC": ["r1"],                            # a, p = r1 + 1
          "READ#2": ["INC"], "ADD#2": ["READ", "READ#2"],           # P[k], a + P[k]
          "READ#3": ["ADD#2"], "WRITE#3": ["INC", "READ#3"],        # P[k] := A[P[k]]
          "WRITE": ["r0", "READ"], "WRITE#2": ["r0", "READ"],       # cell 0 rewritten with a
          "r1": "INC"}),
])

# The same with MIN: p = min(k, a) stops at A[0]'s cell once P is done, so the steps after the n-th only
# rewrite that cell and the answer in P is a fixed point: exact with any number of extra steps at M = 2n + 1.
# The four gates alone cannot tell the end of P (no comparison), so PERMUTATION_UNIFORM's writes go on round
# the memory and onto P after M steps.
PERMUTATION_FIXED = Circuit(2, 3, None, [
    ({}, {"READ": ["r0"], "INC": ["r1"], "MIN": ["INC", "READ"],   # a, k = r1 + 1, p = min(k, a)
          "READ#2": ["MIN"], "ADD#2": ["READ", "READ#2"],           # P[k], a + P[k]
          "READ#3": ["ADD#2"], "WRITE#3": ["MIN", "READ#3"],        # P[k] := A[P[k]] (past P: A[0]'s cell)
          "WRITE": ["r0", "READ"], "WRITE#2": ["r0", "READ"],       # cell 0 rewritten with a
          "r1": "MIN"}),
], ("READ", "INC", "ADD", "MIN", "WRITE"))

# ListSearch as one circuit that every step repeats, on five gates five times a step. The walk's pointer
# lives in cell 0 (the head at first; r0 is never written, so READ(r0) = mem[0]): each step examines the
# node q = mem[0]; where q's value is not v it moves cell 0 on to next(q), and every step writes q into
# cell 2. The walk stops at the first node whose value is v, so from then on each step rewrites the same
# answer: the circuit needs no zero flag, no phase and no latch, and more steps than T(n) change nothing.
LISTSEARCH_UNIFORM = Circuit(2, 5, None, [
    ({}, {"READ": ["r0"], "INC": ["READ"],                          # q = mem[0], q + 1
          "READ#2": ["READ"], "INC#2": ["r0"],                      # next(q), the address 1
          "READ#3": ["INC"], "INC#3": ["INC#2"],                    # value(q), the address 2
          "READ#4": ["INC#2"],                                      # v
          "EQ#4": ["READ#3", "READ#4"], "ADD#4": ["EQ#4", "EQ#4"],  # 2 [value(q) = v]
          "WRITE#4": ["ADD#4", "READ#2"],     # not v: cell 0 := next(q), the walk moves on; v: cell 2 := next(q) ...
          "WRITE#5": ["INC#3", "READ"],       # ... overwritten at once: cell 2 := q
          "WRITE": ["r0", "READ"], "WRITE#2": ["r0", "READ"], "WRITE#3": ["r0", "READ"]}),   # cell 0 := q
], ("READ", "INC", "EQ", "ADD", "WRITE"))

# The same circuit on the gates it uses, once each and in the order it uses them (eleven gates, once a
# step): a gate sequence fitted to the circuit instead of a sequence repeated, so that a search from
# scratch has 11 gates to wire instead of 25, each with fewer sources to choose among.
LISTSEARCH_SEQUENCE = Circuit(1, 1, None, [
    ({}, {"READ": ["r0"], "INC": ["READ"],                  # q = mem[0], q + 1
          "READ#2": ["READ"], "READ#3": ["INC"],            # next(q), value(q)
          "INC#2": ["r0"], "READ#4": ["INC#2"],             # the address 1, v
          "EQ": ["READ#3", "READ#4"], "ADD": ["EQ", "EQ"],  # 2 [value(q) = v]
          "WRITE": ["ADD", "READ#2"],                       # not v: cell 0 := next(q); v: cell 2 := next(q) ...
          "INC#3": ["INC#2"], "WRITE#2": ["INC#3", "READ"]}),   # ... then cell 2 := q
], ("READ", "INC", "READ", "READ", "INC", "READ", "EQ", "ADD", "WRITE", "INC", "WRITE"))

# Merge as one circuit that every step repeats, on twenty gates once a step, with R = 1 (r0 is never
# written, so READ(r0) = mem[0]). The three pointers live where the task puts them, in cells 0 (into A),
# 1 (into B) and 2 (the output): each step writes m = min(x, y) of the two heads x = A's and y = B's at
# the output pointer, then moves it on and moves on A's pointer where x <= y, else B's. Once both heads
# are the guardian G = M - 1 (= DEC(0)), m = G and no pointer moves (adv = [m < G]): the answer is a
# fixed point, exact with any number of extra steps. A write of G past the output (to cell 0 at n = 10,
# M = 25) is overwritten in the same step by cell 0's own.
MERGE_FIXED = Circuit(1, 1, None, [
    ({}, {"INC": ["r0"], "INC#2": ["INC"], "DEC": ["r0"],               # the addresses 1 and 2, G
          "READ": ["r0"], "READ#2": ["INC"], "READ#3": ["INC#2"],      # pa, pb, po
          "READ#4": ["READ"], "READ#5": ["READ#2"],                     # x = mem[pa], y = mem[pb]
          "MIN": ["READ#4", "READ#5"], "LE": ["READ#4", "READ#5"],     # m, [x <= y]
          "LT": ["MIN", "DEC"], "WRITE": ["READ#3", "MIN"],             # adv = [m < G]; mem[po] := m
          "MIN#2": ["LE", "LT"],                                       # A's pointer moves: [x <= y] and adv
          "ADD": ["READ", "MIN#2"], "WRITE#2": ["r0", "ADD"],           # cell 0 := pa + that
          "ADD#2": ["READ#2", "LT"], "SUB": ["ADD#2", "MIN#2"],         # cell 1 := pb + adv - that
          "WRITE#3": ["INC", "SUB"],
          "ADD#3": ["READ#3", "LT"], "WRITE#4": ["INC#2", "ADD#3"]}),  # cell 2 := po + adv
], ("INC", "INC", "DEC", "READ", "READ", "READ", "READ", "READ", "MIN", "LE", "LT", "WRITE", "MIN", "ADD",
    "WRITE", "ADD", "SUB", "WRITE", "ADD", "WRITE"))

# MERGE_FIXED without SUB (stop 36): B's pointer moves by its own comparison, [y < x] (a second LT), which
# is adv - [x <= y] adv in every case (both heads G: neither; only one G: the other moves). Taught by
# stepping stones, MERGE_FIXED's seeds kept one wire of that pointer arithmetic wrong (docs/RESULTS.md).
MERGE_LT = Circuit(1, 1, None, [
    ({}, {**{k: v for k, v in MERGE_FIXED.rules[0][1].items() if k != "SUB"},
          "LT#2": ["READ#5", "READ#4"],                                # B's pointer moves: [y < x]
          "ADD#2": ["READ#2", "LT#2"], "WRITE#3": ["INC", "ADD#2"]}),   # cell 1 := pb + that
], ("INC", "INC", "DEC", "READ", "READ", "READ", "READ", "READ", "MIN", "LE", "LT", "LT", "WRITE", "MIN", "ADD",
    "WRITE", "ADD", "WRITE", "ADD", "WRITE"))

# Not a solution: LISTSEARCH_SEQUENCE with the walk's write always to cell 0, so the walk never stops
# (100% error with T(n) steps: it runs off the list's end). A stepping stone for `basin`: from this walk,
# perturbed, does training find the stop on a match (the write's address 2 [value(q) = v])?
LISTSEARCH_WALK = Circuit(1, 1, None, [
    ({}, {**LISTSEARCH_SEQUENCE.rules[0][1], "WRITE": ["r0", "READ#2"]}),
], LISTSEARCH_SEQUENCE.gates)

# The walk and nothing else: LISTSEARCH_WALK with the comparison unwired too (EQ and ADD read r0), so
# that training from it has to find the value(q) = v test and route it to the write's address itself.
LISTSEARCH_WALK_ONLY = Circuit(1, 1, None, [
    ({}, {**LISTSEARCH_WALK.rules[0][1], "EQ": ["r0", "r0"], "ADD": ["r0", "r0"]}),
], LISTSEARCH_SEQUENCE.gates)

# ListSearch with halting instead of a conditional write (R 2; r0 is never written, so READ(r0) = mem[0]):
# every step writes the node q = mem[0] into cell 2, moves cell 0 on to next(q) and sets r1 := [value(q)
# = v]. The step after a match sees r1 != 0 and halts with the memory unchanged, so cell 2 still holds
# that node. The walk is unconditional and the one conditional is the controller's own (a zero flag to
# the stop logit and to the writes), where LISTSEARCH_SEQUENCE routes the comparison into a write's
# address. It needs n + 1 steps and its answer holds with any number more, since it has halted.
LISTSEARCH_HALT = Circuit(2, 1, None, [
    ({1: False}, {"READ": ["r0"], "WRITE": ["r0", "READ"], "WRITE#2": ["r0", "READ"], "stop": True}),
    ({}, {"READ": ["r0"], "INC": ["READ"],                          # q = mem[0], q + 1
          "READ#2": ["READ"], "READ#3": ["INC"],                    # next(q), value(q)
          "INC#2": ["r0"], "READ#4": ["INC#2"],                     # the address 1, v
          "EQ": ["READ#3", "READ#4"], "INC#3": ["INC#2"],           # [value(q) = v], the address 2
          "WRITE": ["INC#3", "READ"], "WRITE#2": ["r0", "READ#2"],  # cell 2 := q, cell 0 := next(q)
          "r1": "EQ"}),
], ("READ", "INC", "READ", "READ", "INC", "READ", "EQ", "INC", "WRITE", "WRITE"))

# Not a solution: LISTSEARCH_HALT's walk that never halts (its flag r1 := [value(q) = v] still set every
# step). A stepping stone for `basin`: from this walk, does training learn to halt on the flag?
LISTSEARCH_HALT_WALK = Circuit(2, 1, None, LISTSEARCH_HALT.rules[1:], LISTSEARCH_HALT.gates)

# The same walk alone: no flag (r1 never set) and the comparison unwired (READ#4 and EQ read r0), so
# that training from it has to find the test value(q) = v, keep it in a register and halt on it.
LISTSEARCH_HALT_WALK_ONLY = Circuit(2, 1, None, [
    ({}, {**{k: v for k, v in LISTSEARCH_HALT.rules[1][1].items() if k != "r1"},
          "READ#4": ["r0"], "EQ": ["r0", "r0"]}),
], LISTSEARCH_HALT.gates)

CIRCUITS = {"access": ACCESS, "increment": INCREMENT, "copy": COPY, "permutation": PERMUTATION,
            "listsearch": LISTSEARCH}
GATES = PAPER_GATES
# Other circuits for a task, by name
VARIANTS = {("permutation", "uniform"): PERMUTATION_UNIFORM, ("permutation", "fixed"): PERMUTATION_FIXED,
            ("listsearch", "uniform"): LISTSEARCH_UNIFORM, ("listsearch", "sequence"): LISTSEARCH_SEQUENCE,
            ("listsearch", "walk"): LISTSEARCH_WALK, ("listsearch", "walk-only"): LISTSEARCH_WALK_ONLY,
            ("listsearch", "halt"): LISTSEARCH_HALT,
            ("listsearch", "halt-walk"): LISTSEARCH_HALT_WALK,
            ("listsearch", "halt-walk-only"): LISTSEARCH_HALT_WALK_ONLY,
            ("merge", "fixed"): MERGE_FIXED, ("merge", "lt"): MERGE_LT}


def circuit(name, variant=None):
    """The `Circuit` of a task's hand-wired circuit, or of a named variant; KeyError where there is none."""
    if variant is None:
        R, rules = CIRCUITS[name]
        return Circuit(R, 1, None, rules)
    return VARIANTS[name, variant]
