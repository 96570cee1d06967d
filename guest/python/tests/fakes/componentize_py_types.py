"""A stand-in for componentize-py's `componentize_py_types`: the `Ok` and `Err` of WIT results."""

from dataclasses import dataclass


@dataclass
class Ok:
    value: object


@dataclass(frozen=True)
class Err(Exception):
    value: object
