"""The tests' RPC clusters on 127.0.0.1: see edgecc/devices/localcluster.py."""

from edgecc.devices.localcluster import (
    HOST,
    Cluster,
    device_cluster,
    free_port,
    native_server,
    python_server,
    rpc_cluster,
)

__all__ = ["HOST", "Cluster", "device_cluster", "free_port", "native_server", "python_server",
           "rpc_cluster"]
