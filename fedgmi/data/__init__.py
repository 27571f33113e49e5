"""Data for FedGMI: base datasets and the probabilistic-mixture federated scenario."""

from fedgmi.data.datasets import (
    DATA_DIR_ENV,
    DATASETS,
    BaseDataset,
    load_base_dataset,
    resolve_data_dir,
)
from fedgmi.data.scenario import (
    ClientData,
    GroundTruth,
    Scenario,
    ScenarioConfig,
    build_scenario,
    component_name,
    render_components,
    rotate_images,
)

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "BaseDataset",
    "ClientData",
    "GroundTruth",
    "Scenario",
    "ScenarioConfig",
    "build_scenario",
    "component_name",
    "load_base_dataset",
    "render_components",
    "resolve_data_dir",
    "rotate_images",
]
