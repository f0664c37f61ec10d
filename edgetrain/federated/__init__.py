"""Federated on-device training across a heterogeneous fleet, on Flower.

Each client is a device kind from the catalog and trains locally under its own plan (a 256 KiB
nRF52840 trains a sparse subset, a Raspberry Pi or a phone everything); only the tensors it
trained travel, and `PartialFedAvg` (a Flower strategy) averages each tensor over the clients
that trained it, weighted by example count. A reply is untrusted: the server checks it against a
schema, pins each client id to its node, screens and bounds its norm, and caps its weight (at
what the client's plan trains in a round, and at `max_client_weight_fraction` of the round);
a rejected reply is logged with its reason in the round's report. The server's checkpoint
(`_checkpoint`) survives a power loss at any instant, also on FAT.

    from edgetrain.federated import FederationConfig, Partition, federate, load_fleet
    cfg = FederationConfig(model="mcu-cnn", fleet=load_fleet("examples/fleet.toml"), rounds=20,
                           partition=Partition.parse("dirichlet:0.5"))
    result = federate(cfg, out_dir="results/federate")
    result.final_accuracy, result.local_only_accuracy_by_kind

Names are resolved lazily (PEP 562), so `edgetrain --help` does not import Flower or torch.
"""

from edgetrain.lazy import lazy_exports

_EXPORTS = {
    "ClientDropoutError": "edgetrain.federated._client",
    "ClientFaultError": "edgetrain.federated._client",
    "make_client_app": "edgetrain.federated._client",
    "FederationConfig": "edgetrain.federated._config",
    "Partition": "edgetrain.federated._config",
    "PartitionKind": "edgetrain.federated._config",
    "ClientSpec": "edgetrain.federated._fleet",
    "DeviceGroup": "edgetrain.federated._fleet",
    "FaultKind": "edgetrain.federated._fleet",
    "Fleet": "edgetrain.federated._fleet",
    "FleetFileError": "edgetrain.federated._fleet",
    "load_fleet": "edgetrain.federated._fleet",
    "parse_fleet": "edgetrain.federated._fleet",
    "FederationFailedError": "edgetrain.federated._run",
    "FederationResult": "edgetrain.federated._run",
    "federate": "edgetrain.federated._run",
    "prepare_plans": "edgetrain.federated._run",
    "CheckpointMismatchError": "edgetrain.federated._server",
    "make_server_app": "edgetrain.federated._server",
    "PartialFedAvg": "edgetrain.federated._strategy",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
