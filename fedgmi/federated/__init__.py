"""The federated round loop and its contract: what crosses the client/server boundary
(``messages``), the strategy contract (``strategy``), the one client worker (``worker``), the
E-step (``responsibilities``), aggregation, the channel and its codecs, the loop (``server``),
evaluation, checkpoints and multi-process runs."""
