"""The DARTS CNN space and RobustDARTS S1-S4: normal + reduction cells, 14 edges, 2 inputs per node.

Genotypes print and parse in the DARTS ``Genotype(normal=[...], normal_concat=[2, 3, 4, 5], ...)`` form
(``range(2, 6)`` is accepted too) and as JSON.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..errors import DnasError
from .base import CellSpec, Space, register_family
from .ops import DARTS_EXTRA_OPS, DARTS_OPS

STEPS = 4  # intermediate nodes 2..5
# Edge e feeds node (2 + k) from input j: node2 <- 0,1; node3 <- 0,1,2; node4 <- 0..3; node5 <- 0..4.
DARTS_EDGES = tuple((j, 2 + k) for k in range(STEPS) for j in range(2 + k))
NODE_EDGES = {2 + k: [e for e, (_, d) in enumerate(DARTS_EDGES) if d == 2 + k] for k in range(STEPS)}
CONCAT = (2, 3, 4, 5)

Gene = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class DartsGenotype:
    """Per cell type, 8 (op, input) pairs: pairs 2k and 2k+1 feed node k+2."""

    normal: Gene
    normal_concat: tuple[int, ...]
    reduce: Gene
    reduce_concat: tuple[int, ...]

    def __str__(self) -> str:
        def gene(g: Gene) -> str:
            return "[" + ", ".join(f"({op!r}, {j})" for op, j in g) + "]"

        return (f"Genotype(normal={gene(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={gene(self.reduce)}, reduce_concat={list(self.reduce_concat)})")

    def to_json(self) -> dict:
        return {"normal": [[op, j] for op, j in self.normal], "normal_concat": list(self.normal_concat),
                "reduce": [[op, j] for op, j in self.reduce], "reduce_concat": list(self.reduce_concat)}

    def cell(self, cell_type: str) -> Gene:
        return self.normal if cell_type == "normal" else self.reduce

    def key(self) -> tuple:
        """Order-free identity: the same edges listed in another order within a node are the same cell."""
        def canon(g: Gene) -> tuple:
            return tuple(tuple(sorted(g[2 * k: 2 * k + 2], key=lambda p: (p[1], p[0]))) for k in range(STEPS))
        return (canon(self.normal), tuple(self.normal_concat), canon(self.reduce), tuple(self.reduce_concat))

    # -- parsing ------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> "DartsGenotype":
        text = text.strip()
        if text.startswith("{"):
            import json
            try:
                return cls.from_json(json.loads(text))
            except json.JSONDecodeError as e:
                raise DnasError(f"DARTS genotype: invalid JSON ({e.msg})") from None
            except RecursionError:
                raise DnasError("DARTS genotype: invalid JSON (nested too deeply)") from None
        try:
            tree = ast.parse(text, mode="eval").body
        except (SyntaxError, ValueError, MemoryError, RecursionError):  # the last two: expressions nested too deeply
            raise DnasError(f"DARTS genotype: cannot parse {text[:60]!r}...") from None
        if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "Genotype"):
            raise DnasError("DARTS genotype must look like Genotype(normal=[...], normal_concat=[...], reduce=[...], "
                            "reduce_concat=[...])")
        if tree.args:
            raise DnasError("DARTS genotype: use keyword fields normal=, normal_concat=, reduce=, reduce_concat=")
        fields = {}
        for kw in tree.keywords:
            if kw.arg in fields or kw.arg is None:
                raise DnasError(f"DARTS genotype: field {kw.arg or '**'} given twice or unnamed")
            fields[kw.arg] = _literal(kw.value, kw.arg)
        return cls.from_json(fields)

    @classmethod
    def from_json(cls, obj: Any) -> "DartsGenotype":
        if not isinstance(obj, dict):
            raise DnasError("DARTS genotype JSON must be an object with normal, normal_concat, reduce, reduce_concat")
        want = {"normal", "normal_concat", "reduce", "reduce_concat"}
        missing, extra = want - set(obj), set(obj) - want
        if missing or extra:
            raise DnasError(f"DARTS genotype: missing fields {sorted(missing)}" if missing
                            else f"DARTS genotype: unknown fields {sorted(extra)}")
        return cls(_gene(obj["normal"], "normal"), _concat(obj["normal_concat"], "normal_concat"),
                   _gene(obj["reduce"], "reduce"), _concat(obj["reduce_concat"], "reduce_concat"))

    def __post_init__(self) -> None:
        for name in ("normal", "reduce"):
            g = getattr(self, name)
            if len(g) != 2 * STEPS:
                raise DnasError(f"DARTS genotype: {name} needs {2 * STEPS} (op, input) pairs, got {len(g)}")
            for k in range(STEPS):
                (_, a), (_, b) = g[2 * k], g[2 * k + 1]
                for j in (a, b):
                    if not 0 <= j < 2 + k:
                        raise DnasError(f"DARTS genotype: {name} node {2 + k} cannot take input {j} "
                                        f"(must be 0..{1 + k})")
                if a == b:
                    raise DnasError(f"DARTS genotype: {name} node {2 + k} takes input {a} twice")
            for op, _ in g:
                if op not in DARTS_OPS + DARTS_EXTRA_OPS or op == "none":
                    raise DnasError(f"DARTS genotype: unknown op {op!r} in {name}")
        for name in ("normal_concat", "reduce_concat"):
            c = getattr(self, name)
            if not c or any(not 2 <= n <= 1 + STEPS for n in c) or len(set(c)) != len(c):
                raise DnasError(f"DARTS genotype: {name} must list distinct nodes in 2..{1 + STEPS}, got {list(c)}")


def _literal(node: ast.AST, name: str | None) -> Any:
    # range(2, 6) appears in the DARTS code's genotypes; anything else must be a plain literal.
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        args = [_literal(a, name) for a in node.args]
        if node.keywords or not 1 <= len(args) <= 3 or not all(type(a) is int and abs(a) <= 64 for a in args) \
                or (len(args) == 3 and args[2] == 0):
            raise DnasError(f"DARTS genotype: field {name}: range() takes 1-3 small integers and a non-zero step")
        return list(range(*args))
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, MemoryError, RecursionError):  # TypeError: e.g. {[1]: 2}, an unhashable key
        raise DnasError(f"DARTS genotype: field {name} is not a literal") from None


def _gene(value: Any, name: str) -> Gene:
    if not isinstance(value, (list, tuple)):
        raise DnasError(f"DARTS genotype: {name} must be a list of (op, input) pairs")
    out = []
    for item in value:
        if (not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], str)
                or not isinstance(item[1], int) or isinstance(item[1], bool)):
            raise DnasError(f"DARTS genotype: {name} entry {item!r} is not an (op, input) pair")
        out.append((item[0], item[1]))
    return tuple(out)


def _concat(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
        raise DnasError(f"DARTS genotype: {name} must be a list of node indices")
    return tuple(value)


class _DartsFamily:
    def parse(self, space: Space, text: str) -> DartsGenotype:
        return self.validate(space, DartsGenotype.parse(text))

    def from_json(self, space: Space, obj: Any) -> DartsGenotype:
        if isinstance(obj, str):
            return self.parse(space, obj)
        return self.validate(space, DartsGenotype.from_json(obj))

    def validate(self, space: Space, genotype: Any) -> DartsGenotype:
        if not isinstance(genotype, DartsGenotype):
            raise DnasError(f"space {space.name} expects a DARTS genotype, got {type(genotype).__name__}")
        for ct, spec in space.cells.items():
            for k in range(STEPS):
                for op, j in genotype.cell(ct)[2 * k: 2 * k + 2]:
                    e = DARTS_EDGES.index((j, 2 + k))
                    if op not in spec.ops[e]:
                        raise DnasError(f"space {space.name}: op {op!r} is not a candidate on {ct} edge {j}->{2 + k} "
                                        f"(candidates: {', '.join(spec.ops[e])})")
        return genotype

    def discretize(self, space: Space, scores: Mapping[str, torch.Tensor]) -> DartsGenotype:
        """DARTS rule: best non-``none`` op per edge; per node the 2 inputs whose best op scores highest.

        Ties go to the lower index (stable sort), as in the DARTS code.
        """
        genes = {}
        for ct, spec in space.cells.items():
            s = scores[ct]
            best: list[tuple[float, str]] = []
            for e in range(spec.num_edges):
                cand = [(float(s[e, k]), -k, spec.ops[e][k]) for k in range(spec.num_ops) if spec.ops[e][k] != "none"]
                if not cand:
                    raise DnasError(f"space {space.name}: {ct} edge {e} has no candidate besides none")
                v, _, op = max(cand)
                best.append((v, op))
            gene: list[tuple[str, int]] = []
            for node, edges in NODE_EDGES.items():
                top = sorted(edges, key=lambda e: -best[e][0])[:2]
                gene.extend((best[e][1], DARTS_EDGES[e][0]) for e in top)
            genes[ct] = tuple(gene)
        return DartsGenotype(genes["normal"], CONCAT, genes["reduce"], CONCAT)

    def genotype_mask(self, space: Space, genotype: Any) -> dict[str, torch.Tensor]:
        g = self.validate(space, genotype)
        out = {}
        for ct, spec in space.cells.items():
            m = torch.zeros(spec.num_edges, spec.num_ops)
            for k in range(STEPS):
                for op, j in g.cell(ct)[2 * k: 2 * k + 2]:
                    e = DARTS_EDGES.index((j, 2 + k))
                    m[e, spec.op_index(e, op)] = 1.0
            out[ct] = m
        return out


register_family("darts", _DartsFamily())


def _uniform(ops: tuple[str, ...]) -> CellSpec:
    return CellSpec(DARTS_EDGES, tuple(ops for _ in DARTS_EDGES))


def _space(name: str, normal: CellSpec, reduce: CellSpec, description: str) -> Space:
    return Space(name=name, family="darts", cells={"normal": normal, "reduce": reduce}, description=description)


# RobustDARTS S1: a 2-op list per edge (abbreviations as in the RobustDARTS paper).
_AB = {"skip": "skip_connect", "dil3": "dil_conv_3x3", "dil5": "dil_conv_5x5", "sep3": "sep_conv_3x3",
       "max": "max_pool_3x3", "avg": "avg_pool_3x3"}
_S1_NORMAL = ("skip dil3", "skip dil5", "skip dil5", "skip sep3", "skip dil3", "max skip", "skip sep3", "skip sep3",
              "skip dil3", "skip sep3", "max skip", "skip dil3", "dil3 dil5", "dil3 dil5")
_S1_REDUCE = ("max avg", "max dil3", "max avg", "max avg", "skip dil5", "max avg", "max sep3", "skip dil3",
              "skip dil5", "max avg", "max avg", "skip dil5", "skip dil5", "skip dil5")


def _per_edge(rows: tuple[str, ...]) -> CellSpec:
    return CellSpec(DARTS_EDGES, tuple(tuple(_AB[a] for a in r.split()) for r in rows))


_NO_NONE = tuple(o for o in DARTS_OPS if o != "none")
DARTS = _space("darts", _uniform(DARTS_OPS), _uniform(DARTS_OPS), "DARTS CNN space, 8 ops including none")
S5 = _space("s5", _uniform(_NO_NONE), _uniform(_NO_NONE), "DARTS CNN space without none (darts-pt's s5), 7 ops")
S1 = _space("s1", _per_edge(_S1_NORMAL), _per_edge(_S1_REDUCE), "RobustDARTS S1: 2 ops per edge, per-edge sets")
_S2_OPS = ("skip_connect", "sep_conv_3x3")
_S3_OPS = ("none", "skip_connect", "sep_conv_3x3")
_S4_OPS = ("noise", "sep_conv_3x3")
S2 = _space("s2", _uniform(_S2_OPS), _uniform(_S2_OPS), "RobustDARTS S2: {skip_connect, sep_conv_3x3}")
S3 = _space("s3", _uniform(_S3_OPS), _uniform(_S3_OPS), "RobustDARTS S3: {none, skip_connect, sep_conv_3x3}")
S4 = _space("s4", _uniform(_S4_OPS), _uniform(_S4_OPS), "RobustDARTS S4: {noise, sep_conv_3x3}")
