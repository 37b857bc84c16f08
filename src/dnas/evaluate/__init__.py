"""Stand-alone networks, their parameter/FLOP counts, and training from scratch (single process or DDP)."""
from .counts import count_flops, count_params
from .darts_net import DartsNetwork
from .distributed import DistContext, init_distributed
from .networks import build_network, network_counts
from .train import TrainConfig, genotype_from_run, make_config, preset, train_network

__all__ = ["DartsNetwork", "DistContext", "TrainConfig", "build_network", "count_flops", "count_params",
           "genotype_from_run", "init_distributed", "make_config", "network_counts", "preset", "train_network"]
