"""Isomorphism classes of NAS-Bench-201 cells: a canonical expression string per cell.

A cell computes node i = Σ_{j<i} op_{j->i}(node j) and outputs node 3. Writing every node as an expression
of the input and sorting the terms of each sum makes cells that compute the same function (up to the order
of summation and the placement of ``none`` / ``skip_connect``) print the same string. The notation is
NATS-Bench's "unique string": ``0`` is the cell input, ``#`` a zero, ``(e)@op`` an op applied to ``e``,
``+`` a sum, e.g. ``(0)@nor_conv_3x3+0``.

Two rules are offered:

* ``"benchmark"`` (default) gives exactly NAS-Bench-201 / NATS-Bench's equivalence classes, the table's
  ``iso_class`` (6,466 classes; checked on all 15,625 cells): ``skip_connect`` passes its input's
  expression on as one term, ``none`` contributes a zero term, any op applied to a zero node is zero, and a
  node counts as zero only when its whole sum is a single zero term. So a node whose inputs are all zero
  stays "a sum of zeros" (the benchmark keeps such cells apart from plainly zero ones), and because a
  skip's sum stays one term sorted as text, the classes depend on this exact notation.
* ``"functional"``: a node with only zero inputs is zero, zero terms are dropped and the sum a skip passes
  on is merged into the sum it joins. This merges every pair of cells the benchmark merges and more
  (4,930 classes).
"""
from __future__ import annotations

from ..errors import DnasError
from ..spaces import NB201_EDGES, Nb201Genotype

INPUT, ZERO = "0", "#"
RULES = ("benchmark", "functional")


def _genotype(arch: Nb201Genotype | str) -> Nb201Genotype:
    if isinstance(arch, Nb201Genotype):
        return arch
    if isinstance(arch, str):
        return Nb201Genotype.parse(arch)
    raise DnasError(f"expected an NB201 arch string or genotype, got {type(arch).__name__}")


def canonical_nb201(arch: Nb201Genotype | str, rule: str = "benchmark") -> str:
    """The canonical expression of the cell's output, e.g. ``(0)@nor_conv_3x3+0``; ``#`` for a zero cell."""
    if rule not in RULES:
        raise DnasError(f"unknown isomorphism rule {rule!r} (known: {', '.join(RULES)})")
    ops = _genotype(arch).ops
    functional = rule == "functional"
    # Each node as its list of summed terms; node 0 is the cell input.
    nodes: list[list[str]] = [[INPUT]]
    for dst in range(1, 4):
        terms: list[str] = []
        for e, (src, d) in enumerate(NB201_EDGES):
            if d != dst:
                continue
            source = nodes[src]
            if ops[e] == "none" or source == [ZERO]:
                if not functional:  # the benchmark keeps zero terms inside sums
                    terms.append(ZERO)
            elif ops[e] == "skip_connect":
                if functional:
                    terms.extend(source)
                else:
                    terms.append("+".join(source))
            else:
                terms.append(f"({'+'.join(source)})@{ops[e]}")
        nodes.append(sorted(terms) or [ZERO])
    return "+".join(nodes[3])
