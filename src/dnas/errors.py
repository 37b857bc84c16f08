"""Errors that mean "the user's input is wrong": the CLI prints them as one line and exits 2."""


class DnasError(ValueError):
    """Bad input (unknown name, malformed genotype, missing data, impossible size...)."""
