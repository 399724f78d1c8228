"""The six networks' sizes on the paper's datasets and on the chosen one (no training)."""

from __future__ import annotations

import pandas as pd

from lbtf.errors import UsageError
from lbtf.experiments import prepare
from lbtf.experiments.config import Config
from lbtf.models import NETWORKS, PAPER_DATASET, build_model, parameter_counts

PAPER_SHAPES = {"mnist": ((28, 28, 1), 10), "timit": ((360,), 1973),
                "cifar10": ((32, 32, 3), 10), "cifar100": ((32, 32, 3), 100)}


def network_sizes(variant: str, shapes: dict[str, tuple[tuple[int, ...], int]]) -> pd.DataFrame:
    """Trainable and total parameters of each network for each named (input shape, classes)."""
    rows = []
    for net in NETWORKS:
        for dataset, (shape, classes) in shapes.items():
            try:
                counts = parameter_counts(build_model(net, input_shape=shape,
                                                      num_classes=classes, variant=variant))
            except UsageError:
                continue  # a C-network on rank-1 inputs
            rows.append({"network": net, "variant": variant, "dataset": dataset, **counts})
    return pd.DataFrame(rows)


def run(cfg: Config, log=print):
    data = prepare.load_data(cfg)
    paper = {net: PAPER_SHAPES[PAPER_DATASET[net]] for net in NETWORKS}
    rows = [network_sizes(cfg.model.arch_variant, {PAPER_DATASET[n]: paper[n]}).query(
        "network == @n") for n in NETWORKS]
    rows.append(network_sizes(cfg.model.arch_variant,
                              {data.name: (data.input_shape, data.num_classes)}))
    table = pd.concat(rows, ignore_index=True)
    log(f"{data.name}: {data.num_train} train / {len(data.y_test)} test examples, inputs "
        f"{data.input_shape}, {data.num_classes} classes\n")
    log(table.to_markdown(index=False))
    return None
