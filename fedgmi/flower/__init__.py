"""Run any fedgmi Strategy on Flower (``pip install -e ".[flower]"``): a ``ServerApp`` that drives
the in-process loop's server side (:mod:`fedgmi.flower.server_app`), a ``ClientApp`` that runs
``strategy.client_update`` on the data a node holds (:mod:`fedgmi.flower.client_app`), the
records on the wire with both byte counts (:mod:`fedgmi.flower.wire`), the run and node
configs (:mod:`fedgmi.flower.runtime`) and the simulation engine (:mod:`fedgmi.flower.simulation`).

The Flower app to pass to ``flwr run`` is the folder ``fedgmi/flower/app``; see the README,
"Running on Flower".
"""

FLOWER_MISSING = "fedgmi.flower needs Flower: pip install -e \".[flower]\" (flwr[simulation]>=1.42)"
