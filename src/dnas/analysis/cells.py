"""Drawings of selected cells (NB201 and DARTS genotypes): graphviz when it is installed, matplotlib otherwise."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import DnasError
from ..spaces import Genotype, Space
from ._mpl import new_figure, save, short_op

Arc = tuple[str, str, str]  # (from node, to node, label)


def cell_graph(space: Space, genotype: Genotype) -> dict[str, tuple[list[str], list[Arc]]]:
    """Per cell type: node names in drawing order and labelled arcs (``none`` edges left out)."""
    genotype = space.validate(genotype)
    if space.family == "nb201":
        spec = space.cells["cell"]
        arcs = [(str(src), str(dst), short_op(op)) for (src, dst), op in zip(spec.edges, genotype.ops)
                if op != "none"]
        return {"cell": (["0", "1", "2", "3"], arcs)}
    out = {}
    for ct in space.cells:
        gene = genotype.cell(ct)
        names = ["c_{k-2}", "c_{k-1}", "0", "1", "2", "3"]
        arcs = []
        for k in range(len(gene) // 2):
            for op, j in gene[2 * k: 2 * k + 2]:
                arcs.append((names[j], str(k), short_op(op)))
        concat = genotype.normal_concat if ct == "normal" else genotype.reduce_concat
        arcs.extend((str(n - 2), "c_{k}", "") for n in concat)
        out[ct] = (names + ["c_{k}"], arcs)
    return out


def have_graphviz() -> bool:
    try:
        import graphviz  # noqa: F401
    except ImportError:
        return False
    return shutil.which("dot") is not None


def draw_genotype(space: Space, genotype: Genotype, path: str | Path, *, title: str | None = None,
                  engine: str = "auto") -> Path:
    """Write a PNG of the genotype's cell(s). ``engine``: auto (graphviz if usable), graphviz or matplotlib."""
    graph = cell_graph(space, genotype)
    if engine == "graphviz" and not have_graphviz():
        raise DnasError("--engine graphviz needs the graphviz Python package and the dot program")
    if engine == "graphviz" or (engine == "auto" and have_graphviz()):
        return _graphviz(graph, Path(path), title)
    return _matplotlib(graph, Path(path), title or str(genotype))


def _graphviz(graph: dict[str, tuple[list[str], list[Arc]]], path: Path, title: str | None) -> Path:
    import graphviz

    from ..io import atomic_write_bytes
    g = graphviz.Digraph(format="png", graph_attr={"rankdir": "LR", "label": title or "", "fontsize": "12"})
    for ct, (nodes, arcs) in graph.items():
        with g.subgraph(name=f"cluster_{ct}") as sub:
            sub.attr(label=ct)
            for n in nodes:
                shape = "box" if n.startswith("c_") or n == "0" and ct == "cell" else "ellipse"
                sub.node(f"{ct}:{n}", n, shape=shape)
            for a, b, label in arcs:
                sub.edge(f"{ct}:{a}", f"{ct}:{b}", label=label, color="black" if label else "grey")
    atomic_write_bytes(path, g.pipe(format="png"))
    return path


def _positions(nodes: list[str]) -> dict[str, tuple[float, float]]:
    if nodes[0] == "c_{k-2}":  # DARTS: two inputs stacked on the left, output on the right
        pos = {"c_{k-2}": (0.0, 1.1), "c_{k-1}": (0.0, -1.1), "c_{k}": (6.6, 0.0)}
        pos.update({str(k): (1.6 + 1.25 * k, 0.75 if k % 2 else -0.75) for k in range(4)})
        return pos
    return {n: (float(i), 0.0) for i, n in enumerate(nodes)}


def _matplotlib(graph: dict[str, tuple[list[str], list[Arc]]], path: Path, title: str) -> Path:
    n = len(graph)
    fig = new_figure(7.5, 2.8 * n + 0.4)
    for i, (ct, (nodes, arcs)) in enumerate(graph.items()):
        ax = fig.add_subplot(n, 1, i + 1)
        pos = _positions(nodes)
        for a, b, label in arcs:
            (x1, y1), (x2, y2) = pos[a], pos[b]
            # Arcs that skip over nodes on the same row bend (alternately below / above) to miss them.
            hop = round(abs(x2 - x1))
            rad = 0.0 if y1 != y2 or hop <= 1 else (0.4 if hop % 2 == 0 else -0.4)
            ax.annotate("", xy=(x2, y2), xytext=(x1, y1),
                        arrowprops={"arrowstyle": "-|>", "color": "black" if label else "grey",
                                    "connectionstyle": f"arc3,rad={rad}", "shrinkA": 9, "shrinkB": 9})
            if label:
                dx, dy = x2 - x1, y2 - y1
                mx, my = (x1 + x2) / 2 + rad * dy / 2, (y1 + y2) / 2 - rad * dx / 2
                ax.text(mx, my, label, ha="center", va="center", fontsize=7,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
        for name, (x, y) in pos.items():
            ax.text(x, y, name, ha="center", va="center", fontsize=9,
                    bbox={"boxstyle": "circle" if not name.startswith("c_") else "round",
                          "fc": "#dde8f5" if not name.startswith("c_") else "#f5e6cc", "ec": "black"})
        xs = [p[0] for p in pos.values()]
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
        ax.set_ylim(-1.6, 1.6)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(ct, fontsize=9)
    fig.suptitle(_wrap(title), fontsize=7)
    return save(fig, path)


def _wrap(text: str, width: int = 110) -> str:
    return "\n".join(text[i:i + width] for i in range(0, len(text), width))

