import csv
import json

import pytest
import torch
import torch.nn as nn

from dnas.errors import DnasError
from dnas.spaces import DARTS, NB201, S1, S2, S3, S4, S5, DartsGenotype, Nb201Genotype, get_space
from dnas.supernet import Nb201Network
from conftest import shared_file

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
DARTS_V2 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
            "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


def test_nb201_round_trip():
    g = NB201.parse(BEST)
    assert g.ops == ("nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3", "nor_conv_1x1")
    assert str(g) == BEST
    assert NB201.parse(str(g)) == g
    assert NB201.from_json(g.to_json()) == g


@pytest.mark.parametrize("bad, why", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", "3 nodes"),
    ("|conv_7x7~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|", "unknown NB201 op"),
    ("|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|", "input 1"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|", "2 input edge"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3_1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|", "malformed"),
    ("nor_conv_3x3~0+a+b", "must look like"),
])
def test_nb201_rejects(bad, why):
    with pytest.raises(DnasError, match=why):
        NB201.parse(bad)


def test_darts_round_trip_text_and_json():
    g = DARTS.parse(DARTS_V2)
    assert str(g) == DARTS_V2
    assert DARTS.from_json(json.loads(json.dumps(g.to_json()))) == g
    assert DARTS.parse(json.dumps(g.to_json())) == g
    # the DARTS code's genotypes use range(2, 6)
    assert DARTS.parse(DARTS_V2.replace("[2, 3, 4, 5]", "range(2, 6)")) == g
    assert g.normal[5] == ("skip_connect", 0)


@pytest.mark.parametrize("edit, why", [
    (lambda t: t.replace("'dil_conv_3x3', 2", "'dil_conv_3x3', 5"), "cannot take input 5"),
    (lambda t: t.replace("sep_conv_3x3", "sep_conv_9x9", 1), "unknown op"),
    (lambda t: t.replace("('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0)", "('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0)", 1), "twice"),
    (lambda t: t.replace(", ('max_pool_3x3', 1)], reduce_concat", "], reduce_concat"), "needs 8"),
    (lambda t: t.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[1, 2]"), "normal_concat"),
    (lambda t: t.replace("Genotype(", "Genotyp("), "must look like"),
    (lambda t: t[:-5], "cannot parse"),
    (lambda t: t.replace("reduce_concat=[2, 3, 4, 5]", "reduce_concat=__import__('os')"), "not a literal"),
    (lambda t: t[:-1] + ", reduce_concat=[2, 3])", "reduce_concat given twice"),
    (lambda t: t.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(2, 6, 0)"), "non-zero step"),
    (lambda t: t.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range('2', '6')"), "small integers"),
    (lambda t: t.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(2, 1000000000000)"), "small integers"),
])
def test_darts_rejects(edit, why):
    with pytest.raises(DnasError, match=why):
        DARTS.parse(edit(DARTS_V2))


@pytest.mark.parametrize("text, why", [
    (DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat={[1]: 2}"), "not a literal"),  # TypeError
    (DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat={1, [2]}"), "not a literal"),
    ("Genotype(normal=" + "-" * 100_000 + "1)", "cannot parse"),  # MemoryError / RecursionError in ast.parse
    ('{"normal": ' + "[" * 100_000 + "]" * 100_000 + "}", "invalid JSON"),  # RecursionError in json
])
def test_darts_malformed_text_is_a_dnas_error(text, why):
    """Whatever the text, parsing fails with a DnasError (one line and exit code 2 in the CLI), never a traceback."""
    with pytest.raises(DnasError, match=why):
        DARTS.parse(text)


def test_space_specific_validation():
    # S2 only has skip_connect and sep_conv_3x3: DARTS-V2 uses other ops
    with pytest.raises(DnasError, match="not a candidate"):
        S2.parse(DARTS_V2)
    with pytest.raises(DnasError, match="expects a DARTS genotype"):
        DARTS.validate(NB201.parse(BEST))
    with pytest.raises(DnasError, match="unknown space"):
        get_space("nb301")


def test_space_shapes():
    assert NB201.alpha_shapes() == {"cell": (6, 5)}
    assert DARTS.alpha_shapes() == {"normal": (14, 8), "reduce": (14, 8)}
    assert S5.alpha_shapes()["normal"] == (14, 7) and "none" not in S5.cells["normal"].ops[0]
    assert S1.alpha_shapes()["normal"] == (14, 2)
    assert S1.cells["normal"].ops[5] == ("max_pool_3x3", "skip_connect")
    assert S1.cells["reduce"].ops[4] == ("skip_connect", "dil_conv_5x5")
    assert S3.cells["normal"].ops[0] == ("none", "skip_connect", "sep_conv_3x3")
    assert S4.cells["reduce"].ops[13] == ("noise", "sep_conv_3x3")


def test_nb201_discretize_argmax_includes_none():
    s = torch.zeros(6, 5)
    expect = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3", "none"]
    for e, op in enumerate(expect):
        s[e, NB201.cells["cell"].ops[e].index(op)] = 1.0
    assert NB201.discretize({"cell": s}).ops == tuple(expect)


def test_darts_discretize_top2_rule_by_hand():
    ops = DARTS.cells["normal"].ops[0]
    s = torch.zeros(14, 8)
    # none is ignored even when largest; each edge's best non-none op decides the edge's strength
    s[:, ops.index("none")] = 10.0
    strengths = {0: 0.5, 1: 0.4,            # node 2: both inputs
                 2: 0.1, 3: 0.3, 4: 0.2,    # node 3: edges from 1 and 2
                 5: 0.9, 6: 0.1, 7: 0.8, 8: 0.2,  # node 4: inputs 0 and 2
                 9: 0.1, 10: 0.2, 11: 0.3, 12: 0.6, 13: 0.7}  # node 5: inputs 4 then 3
    best = {0: "sep_conv_3x3", 1: "max_pool_3x3", 3: "dil_conv_5x5", 4: "skip_connect", 5: "avg_pool_3x3",
            7: "sep_conv_5x5", 12: "dil_conv_3x3", 13: "sep_conv_3x3"}
    for e, v in strengths.items():
        s[e, ops.index(best.get(e, "skip_connect"))] = v
    g = DARTS.discretize({"normal": s, "reduce": s})
    assert g.normal == (("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("dil_conv_5x5", 1), ("skip_connect", 2),
                        ("avg_pool_3x3", 0), ("sep_conv_5x5", 2), ("sep_conv_3x3", 4), ("dil_conv_3x3", 3))
    mask = DARTS.genotype_mask(g)["normal"]
    assert mask.sum() == 8 and mask[13, ops.index("sep_conv_3x3")] == 1 and mask[:, 0].sum() == 0


def test_darts_discretize_ties_go_to_lower_index():
    g = DARTS.discretize({"normal": torch.zeros(14, 8), "reduce": torch.zeros(14, 8)})
    # all equal: first non-none op, and the two lowest-numbered inputs of every node
    assert g.normal == tuple((DARTS.cells["normal"].ops[0][1], j) for k in range(4) for j in (0, 1))


def test_genotype_key_ignores_order_within_node():
    g = DARTS.parse(DARTS_V2)
    swapped = DartsGenotype(g.normal[1:2] + g.normal[0:1] + g.normal[2:], g.normal_concat, g.reduce, g.reduce_concat)
    assert swapped != g and swapped.key() == g.key()
    other_reduce = DARTS.parse(DARTS_V2.replace("reduce=[('max_pool_3x3', 0)", "reduce=[('avg_pool_3x3', 0)"))
    assert other_reduce.key() != g.key()  # the key covers both cell types


def test_nb201_network_param_counts_match_benchmark():
    """Every NAS-Bench-201 network in the shared sample has exactly the benchmark's parameter count."""
    path = shared_file("nasbench201/nb201_valid200_sample.csv")
    if path is None:
        pytest.skip("shared NB201 sample not available")
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 491
    by_arch = {}
    for r in rows:
        g = Nb201Genotype.parse(r["arch_str"])
        key = tuple(op != "none" and op for op in g.ops)  # parameter count depends only on which convs exist
        if key not in by_arch:
            by_arch[key] = sum(p.numel() for p in Nb201Network(g).parameters())
        assert by_arch[key] / 1e6 == pytest.approx(float(r["cifar10_params_M"]), abs=5e-7), r["arch_str"]
    arch74 = next(r for r in rows if r["arch_index"] == "74")
    assert arch74["cifar10_params_M"] == "0.344346"


@pytest.mark.parametrize("kind, kw", [
    ("max", dict(kernel_size=3, stride=1, padding=1)), ("max", dict(kernel_size=3, stride=2, padding=1)),
    ("max", dict(kernel_size=2, stride=2, ceil_mode=True)), ("max", dict(kernel_size=3, stride=1, padding=1, dilation=2)),
    ("avg", dict(kernel_size=3, stride=1, padding=1, count_include_pad=False)),
    ("avg", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("avg", dict(kernel_size=2, stride=2, ceil_mode=True)),  # 9 x 7 input: a partial window per row and column
    ("avg", dict(kernel_size=3, stride=2, padding=1, divisor_override=2)),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pools_take_the_channels_last_kernel_and_stay_bit_identical(kind, kw, dtype):
    """dnas's pools run NCHW CPU input through the faster channels-last kernel: outputs, gradients and
    their layouts must be exactly nn's (ties and NaN included for max: the first maximum wins), for every
    setting nn's pools take (ceil_mode, dilation, divisor_override), not only the 3x3 ones the spaces use."""
    from dnas.spaces.ops import AvgPool2d, MaxPool2d
    ours, theirs = (MaxPool2d(**kw), nn.MaxPool2d(**kw)) if kind == "max" else (AvgPool2d(**kw), nn.AvgPool2d(**kw))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 9, 7, generator=g, dtype=dtype).round(decimals=1)  # rounded: ties inside windows
    x[0, 0, 0, 0] = float("nan")
    grads = []
    for pool in (ours, theirs):
        xi = x.clone().requires_grad_()
        y = pool(xi)
        y.backward(torch.arange(y.numel(), dtype=dtype).reshape(y.shape))
        grads.append((y.detach(), xi.grad, y.stride(), xi.grad.stride()))
    (y1, g1, s1, t1), (y2, g2, s2, t2) = grads
    assert torch.equal(y1.nan_to_num(), y2.nan_to_num()) and torch.equal(g1.nan_to_num(), g2.nan_to_num())
    assert (s1, t1) == (s2, t2)
    with torch.no_grad():
        assert torch.equal(ours(x).nan_to_num(), theirs(x).nan_to_num()) and ours(x).is_contiguous()


def test_nb201_genotype_mask_by_hand():
    m = NB201.genotype_mask(NB201.parse(BEST))["cell"]
    ops = NB201.cells["cell"].ops[0]  # none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3
    want = torch.zeros(6, 5)
    for e, op in enumerate(["nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3",
                            "nor_conv_1x1"]):
        want[e, ops.index(op)] = 1.0
    assert torch.equal(m, want)
