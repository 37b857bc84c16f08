"""Benchmark ground truth: NAS-Bench-201 tables (CSV or the official APIs) and NB201 isomorphism classes."""
from .iso import canonical_nb201
from .nb201 import (ACCURACY_COLUMNS, NUM_ARCHS, RANKED, TABLE_ENV, Nb201Table, lookup_nb201, open_benchmark,
                    resolve_table_path)
from .official import OfficialNb201

__all__ = ["ACCURACY_COLUMNS", "NUM_ARCHS", "Nb201Table", "OfficialNb201", "RANKED", "TABLE_ENV", "canonical_nb201",
           "lookup_nb201", "open_benchmark", "resolve_table_path"]
