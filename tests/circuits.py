"""Hand-wired circuits for Access, Increment and Copy on the paper's 14 gates (see nramctl.program)."""
from nramctl.gates import PAPER_GATES

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

CIRCUITS = {"access": ACCESS, "increment": INCREMENT, "copy": COPY}
GATES = PAPER_GATES
