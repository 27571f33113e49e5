"""Data for FedGMI: base datasets, kinds of inherent distribution (shifts) and the
probabilistic-mixture federated scenario; :mod:`fedgmi.data.custom` for your own data."""

from fedgmi.data.datasets import (
    DATA_DIR_ENV,
    DATASET_INFO,
    DATASETS,
    BaseDataset,
    DatasetInfo,
    dataset_info,
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
from fedgmi.data.shifts import (
    ClassSkew,
    Composed,
    Corruption,
    DatasetUnion,
    LabelPermutation,
    Rotation,
    Shift,
    Transformed,
)

__all__ = [
    "DATASETS",
    "DATASET_INFO",
    "DATA_DIR_ENV",
    "BaseDataset",
    "ClassSkew",
    "ClientData",
    "Composed",
    "Corruption",
    "DatasetInfo",
    "DatasetUnion",
    "GroundTruth",
    "LabelPermutation",
    "Rotation",
    "Scenario",
    "ScenarioConfig",
    "Shift",
    "Transformed",
    "build_scenario",
    "component_name",
    "dataset_info",
    "load_base_dataset",
    "render_components",
    "resolve_data_dir",
    "rotate_images",
]
