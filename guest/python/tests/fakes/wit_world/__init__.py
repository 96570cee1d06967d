"""A stand-in for the bindings componentize-py generates, with the host's side in memory, so that
the `poolhost` package runs under the tests on an ordinary Python."""


class WitWorld:
    pass
