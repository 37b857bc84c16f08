"""Parameter and FLOP counts against the benchmarks' own numbers (NB201 sample, NB301 sample, DARTS paper)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from dnas.errors import DnasError
from dnas.evaluate import DartsNetwork, build_network, count_flops, count_params, network_counts
from dnas.spaces import DartsGenotype, Nb201Genotype, get_space
from dnas.supernet import Nb201Network

SHARED = Path(__file__).resolve().parents[2] / "shared/data"  # the repo is cloned beside shared/
DARTS_V2 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
            "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


def rows(relative: str) -> list[dict[str, str]]:
    path = SHARED / relative
    if not path.is_file():
        pytest.skip(f"{path} not available")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def one_thread():
    # Batch-1 forwards of small nets: extra threads only fight over the shared cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_conv_linear_pool_counts():
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=True)
    assert count_flops(conv, (1, 8, 5, 5), elementwise=False) == 16 * 25 * (9 * 8 // 4) + 16 * 25
    lin = nn.Linear(7, 3)
    assert count_flops(lin, (2, 7)) == 2 * 3 * 7 + 2 * 3
    net = nn.Sequential(nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(3, 1, 1), nn.AdaptiveAvgPool2d(1))
    assert count_flops(net, (1, 2, 4, 4)) == 2 * 32 + 32 + 9 * 32 + 32
    assert count_flops(net, (1, 2, 4, 4), elementwise=False) == 0


def test_count_flops_restores_mode_and_leaves_stats():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    net.train()
    before = net[1].running_mean.clone()
    count_flops(net, (1, 3, 8, 8))
    assert net.training and torch.equal(net[1].running_mean, before)


def test_nb201_params_and_flops_match_the_benchmark(one_thread):
    """Every row of the 491-architecture sample: params exactly, FLOPs within 1% (in fact < 0.03%)."""
    worst = 0.0
    for r in rows("nasbench201/nb201_valid200_sample.csv"):
        net = Nb201Network(Nb201Genotype.parse(r["arch_str"]), num_classes=10)
        assert count_params(net) / 1e6 == pytest.approx(float(r["cifar10_params_M"]), abs=1e-6), r["arch_str"]
        flops = count_flops(net, (1, 3, 32, 32)) / 1e6
        worst = max(worst, abs(flops - float(r["cifar10_flops_M"])) / float(r["cifar10_flops_M"]))
    assert worst < 0.0003


def test_nb201_other_datasets_first_rows(one_thread):
    for r in rows("nasbench201/nb201_valid200_sample.csv")[:5]:
        g = Nb201Genotype.parse(r["arch_str"])
        for ds, classes, res in (("cifar100", 100, 32), ("imagenet16", 120, 16)):
            net = Nb201Network(g, num_classes=classes)
            assert count_params(net) / 1e6 == pytest.approx(float(r[f"{ds}_params_M"]), abs=1e-6)
            flops = count_flops(net, (1, 3, res, res)) / 1e6
            assert flops == pytest.approx(float(r[f"{ds}_flops_M"]), rel=0.01)


def test_darts_v2_params():
    """DARTS paper: 3.3M parameters (the auxiliary head is not counted)."""
    net = DartsNetwork(DartsGenotype.parse(DARTS_V2), channels=36, layers=20, auxiliary=True)
    assert count_params(net) == 3_349_342
    assert count_params(net, exclude_aux=False) == 3_825_768
    counts = network_counts(get_space("darts"), DartsGenotype.parse(DARTS_V2))
    assert counts["params_M"] == 3.349342 and counts["params_with_aux_M"] == 3.825768
    assert 520 < counts["madds_M"] < 540


def test_nb301_params_column_is_c32_8_cells_with_non_affine_op_bn():
    """NB301's params_M counts the 8-cell C=32 network without the auxiliary head, with non-affine BN in the
    cell ops (stem and preprocessing BNs affine): all 500 rows exactly. The affine variant does not match."""
    sample = rows("nasbench301/nb301_cifar10_valid_sample.csv")
    space = get_space("darts")
    for i, r in enumerate(sample):
        g = space.parse(r["genotype"])
        net = build_network(space, g, channels=32, layers=8, auxiliary=True, op_affine=False)
        assert count_params(net) == round(float(r["params_M"]) * 1e6), r["genotype"]
        if i < 3:
            assert count_params(build_network(space, g, channels=32, layers=8)) != round(float(r["params_M"]) * 1e6)


def test_counts_for_every_space(one_thread):
    g = "Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1), ('sep_conv_3x3', 0), ('skip_connect', 1), " \
        "('sep_conv_3x3', 0), ('skip_connect', 1), ('sep_conv_3x3', 0), ('skip_connect', 1)], " \
        "normal_concat=[2, 3, 4, 5], reduce=[('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), " \
        "('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1)], " \
        "reduce_concat=[2, 3, 4, 5])"
    counts = {name: network_counts(get_space(name), get_space(name).parse(g), channels=8, layers=5)
              for name in ("darts", "s5", "s2", "s3")}
    c = counts["darts"]
    assert c["channels"] == 8 and c["layers"] == 5 and c["params_M"] == 0.051106
    assert c["flops_M"] > c["madds_M"] > 0 and c["params_with_aux_M"] > c["params_M"]
    assert all(other == c for other in counts.values())  # one genotype, one network, whatever the space
    noise = g.replace("skip_connect", "noise")
    s4 = network_counts(get_space("s4"), get_space("s4").parse(noise), channels=8, layers=5)
    # By hand: noise has no parameters, and the skips it replaces are parameter-free except the four
    # stride-2 ones of each reduction cell (C=16 then 32), FactorizedReduce with C² + 2C each.
    assert round((c["params_M"] - s4["params_M"]) * 1e6) == 4 * (16 ** 2 + 2 * 16) + 4 * (32 ** 2 + 2 * 32) == 5504


def test_counts_never_allocate_the_network():
    """Counting needs only shapes: a network of ~10^11 parameters (400 GB in fp32) is counted, not built.
    NB201 parameters grow as C²: C = 16 has 1,073,466 (the table's figure), the 3x3 / 1x1 convs 9C² / C²."""
    g = get_space("nb201").parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|")
    small = network_counts(get_space("nb201"), g)
    assert small["params_M"] == 1.073466
    huge = network_counts(get_space("nb201"), g, channels=16 * 300)
    assert huge["params_M"] > 300 ** 2 * 0.9 * small["params_M"]


@pytest.mark.parametrize("size", [{"channels": 0}, {"layers": 0}])
def test_zero_sizes_are_refused_not_replaced_by_the_defaults(size):
    space = get_space("nb201")
    g = space.parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|")
    with pytest.raises(DnasError, match="impossible network size"):
        build_network(space, g, **size)
    with pytest.raises(DnasError, match="impossible network size"):
        network_counts(space, g, resolution=8, **size)


@pytest.mark.parametrize("resolution", [0, 2, 6])
def test_counts_refuse_an_input_size_the_networks_cannot_take(resolution):
    space = get_space("s2")
    g = space.parse("Genotype(normal=[('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 1), "
                    "('skip_connect', 1), ('skip_connect', 0), ('skip_connect', 0), ('skip_connect', 2)], "
                    "normal_concat=[2, 3, 4, 5], reduce=[('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 2), "
                    "('skip_connect', 1), ('skip_connect', 0), ('skip_connect', 2), ('skip_connect', 2), "
                    "('skip_connect', 1)], reduce_concat=[2, 3, 4, 5])")
    with pytest.raises(DnasError, match="resolution must be a multiple of 4"):
        network_counts(space, g, channels=4, layers=3, resolution=resolution)
    assert network_counts(space, g, channels=4, layers=3, resolution=8)["flops_M"] > 0
