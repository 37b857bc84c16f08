"""Supernet training: one bilevel loop with pluggable pieces (see ``pieces.py`` and ``modes.py``)."""
from .config import SearchConfig
from .modes import MODES, Mode, get_mode, make_config, register_mode
from .run import SearchRun, build_run, open_run, run_search
from .trainer import Recipe, Searcher, cosine_lr

__all__ = ["MODES", "Mode", "Recipe", "SearchConfig", "SearchRun", "Searcher", "build_run", "cosine_lr", "get_mode",
           "make_config", "open_run", "register_mode", "run_search"]
