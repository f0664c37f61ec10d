"""Federated on-device training across a heterogeneous fleet, on Flower.

Each client is a device kind from the catalog and trains locally under its own plan (a 256 KiB
nRF52840 trains a sparse subset, a Raspberry Pi or a phone everything); only the tensors it
trained travel, and `PartialFedAvg` (a Flower strategy) averages each tensor over the clients
that trained it, weighted by example count.

    from edgetrain.federated import FederationConfig, Partition, federate, load_fleet
    cfg = FederationConfig(model="mcu-cnn", fleet=load_fleet("examples/fleet.toml"), rounds=20,
                           partition=Partition.parse("dirichlet:0.5"))
    result = federate(cfg, out_dir="results/federate")
    result.final_accuracy, result.local_only_accuracy_by_kind
"""

from edgetrain.federated._client import ClientDropoutError, ClientFaultError, make_client_app
from edgetrain.federated._config import FederationConfig, Partition, PartitionKind
from edgetrain.federated._fleet import ClientSpec, DeviceGroup, FaultKind, Fleet, FleetFileError, load_fleet, parse_fleet
from edgetrain.federated._run import FederationFailedError, FederationResult, federate, prepare_plans
from edgetrain.federated._server import CheckpointMismatchError, make_server_app
from edgetrain.federated._strategy import PartialFedAvg

__all__ = ["CheckpointMismatchError", "ClientDropoutError", "ClientFaultError", "ClientSpec",
           "DeviceGroup", "FaultKind", "FederationConfig", "FederationFailedError",
           "FederationResult", "Fleet", "FleetFileError", "PartialFedAvg", "Partition",
           "PartitionKind", "federate", "load_fleet", "make_client_app", "make_server_app",
           "parse_fleet", "prepare_plans"]
