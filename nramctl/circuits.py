"""Hand-wired circuits on the paper's 14 gates (see nramctl.program): Access, Increment and Copy, and two hard
tasks, Permutation and ListSearch, that show those tasks can be solved within their T(n) steps with R = 4;
and Permutation again as one phase-free circuit with the gate sequence three times."""
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

# Permutation as one circuit that every step repeats, with the gate sequence three times (model.repeat
# = 3: three READs a step), no phase and no zero flag: r0 is never written (so READ(r0) = mem[0] = a),
# r1 = the last cell of P written. Step k writes P[k] := A[P[k]]; the steps after the n-th write past P.
# It needs M >= 14 at lengths to 6: with T = 2n + 2 steps the writes then never wrap around to P.
# (R, repeat, the smallest M, rules)
PERMUTATION_UNIFORM = (4, 3, 14, [
    ({}, {"READ": ["r0"], "INC": ["r1"],                            # a, p = r1 + 1
          "READ#2": ["INC"], "ADD#2": ["READ", "READ#2"],           # P[k], a + P[k]
          "READ#3": ["ADD#2"], "WRITE#3": ["INC", "READ#3"],        # P[k] := A[P[k]]
          "WRITE": ["r0", "READ"], "WRITE#2": ["r0", "READ"],       # cell 0 rewritten with a
          "r1": "INC"}),
])

CIRCUITS = {"access": ACCESS, "increment": INCREMENT, "copy": COPY, "permutation": PERMUTATION,
            "listsearch": LISTSEARCH}
GATES = PAPER_GATES
# Other circuits for a task, by name: (R, repeat, the smallest M they solve the task's difficulty at, rules)
VARIANTS = {("permutation", "uniform"): PERMUTATION_UNIFORM}


def circuit(name, variant=None):
    """(R, repeat, smallest M or None, rules) of a task's hand-wired circuit, or of a named variant;
    KeyError where there is none."""
    if variant is None:
        R, rules = CIRCUITS[name]
        return R, 1, None, rules
    return VARIANTS[name, variant]
