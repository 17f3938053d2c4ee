"""Envoy configured from watched files, so `babelgate up` can change routes and clusters without a restart.

The bootstrap keeps what never changes while running (the listener, the ext_proc and JWKS clusters, the admin port)
and points Envoy at two files in one directory: `cds.yaml` (backend and chain clusters) and `rds.yaml` (the chain
routes). Each file is a DiscoveryResponse, written whole and renamed into place; Envoy notices the rename and applies
it to new requests while requests in flight finish on what they started with, and no connection is dropped.

A reload writes the union of the old and the new configuration first (new definitions win), so that neither an
ext_proc server still on the old configuration nor one already on the new one names a route Envoy lacks; once every
server has reloaded, the new configuration alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import betterproto2
import yaml
from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap, BootstrapDynamicResources
from envoy_data_plane.envoy.config.core.v3 import ApiVersion, ConfigSource, Node, PathConfigSource, WatchedDirectory
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import Rds

from .. import constants
from ..config.models import Config
from .bootstrap import message_dict, render_bootstrap, route_configuration
from .clusters import all_clusters

CLUSTERS_FILE = "cds.yaml"
ROUTES_FILE = "rds.yaml"
ROUTE_CONFIG_NAME = "babelgate"
_CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
_ROUTES_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
_UNROUTED = "unrouted"


def _source(directory: Path, name: str) -> ConfigSource:
    return ConfigSource(
        path_config_source=PathConfigSource(path=str(directory / name),
                                            watched_directory=WatchedDirectory(path=str(directory))),
        resource_api_version=ApiVersion.V3)


def bootstrap_yaml(config: Config, directory: Path) -> str:
    """The standalone bootstrap, with routes and every cluster but the ext_proc one read from `directory`."""
    routes = Rds(route_config_name=ROUTE_CONFIG_NAME, config_source=_source(directory, ROUTES_FILE))
    bootstrap: Bootstrap = render_bootstrap(config, routes_from=routes)
    resources = bootstrap.static_resources
    assert resources is not None  # render_bootstrap sets them
    resources.clusters = [c for c in resources.clusters if _static(c.name)]
    bootstrap.dynamic_resources = BootstrapDynamicResources(cds_config=_source(directory, CLUSTERS_FILE))
    bootstrap.node = Node(id="babelgate", cluster="babelgate")  # file-based xDS still wants a node identity
    data = message_dict(bootstrap)
    return "# Rendered by `babelgate up`; routes and clusters live in the files next to it.\n" + yaml.safe_dump(
        data, sort_keys=False, width=120)


def write_resources(directory: Path, configs: list[Config], version: int) -> None:
    """The clusters and routes of every config given, later configs winning on a name clash."""
    clusters: dict[str, dict] = {}
    routes: dict[str, dict] = {}
    host: dict = {}
    for config in configs:
        for cluster in all_clusters(config):
            if not _static(cluster.name):
                clusters[cluster.name] = {"@type": _CLUSTER_TYPE, **_as_dict(cluster)}
        rendered = _as_dict(route_configuration(config))
        host = rendered["virtual_hosts"][0]
        for route in host["routes"]:
            routes.pop(route["name"], None)  # re-inserted: the newest config's order
            routes[route["name"]] = route
    catch_all = routes.pop(_UNROUTED)
    route_config = {"@type": _ROUTES_TYPE, "name": ROUTE_CONFIG_NAME,
                    "virtual_hosts": [{**host, "routes": [*routes.values(), catch_all]}]}
    directory.mkdir(parents=True, exist_ok=True)
    # Clusters first: a route may only name a cluster Envoy already has.
    _publish(directory / CLUSTERS_FILE, {"version_info": str(version), "resources": list(clusters.values())})
    _publish(directory / ROUTES_FILE, {"version_info": str(version), "resources": [route_config]})


def _static(cluster_name: str) -> bool:
    """In the bootstrap, never in the watched files: the ext_proc cluster, and the JWKS clusters the listener's JWT
    filter fetches from (a listener's filter config changes only with a restart, so its clusters do too)."""
    return cluster_name == constants.EXT_PROC_CLUSTER or cluster_name.startswith(constants.JWKS_CLUSTER_PREFIX)


def _as_dict(message: betterproto2.Message) -> dict:
    return message_dict(message)


def _publish(path: Path, response: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(yaml.safe_dump(response, sort_keys=False, width=120))
    os.replace(temporary, path)
