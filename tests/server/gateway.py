"""The reference deployment's Envoy, run for real on loopback in front of launchers the tests start.

The Envoy configuration is the one `docker/k8s/envoy.yaml` ships, with two substitutions that stand in
for Kubernetes: listeners on free loopback ports, and each cluster's pods read from a file (EDS) that the
test rewrites, where the cluster would resolve the headless Service `mmrerank-pods` (which the
endpoints controller updates as pods become ready or start terminating).
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import yaml
from manifests import envoy_binary, envoy_config

from mmrerank.dev.background import BackgroundServer, free_ports

# The pod port each cluster sends to, as in the shipped config: cluster -> attribute of BackgroundServer.
POD_PORTS = {"triton_http": "http_port", "triton_grpc": "grpc_port", "rerank_api": "api_port"}


class Gateway:
    """A running Envoy with the shipped configuration; `route_to` sets which replicas it sends to."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.http_port, self.grpc_port, self.api_port, self.admin_port = free_ports(4)
        config = envoy_config()
        listener_ports = {"kserve_http": self.http_port, "kserve_grpc": self.grpc_port, "rerank_api": self.api_port}
        for listener in config["static_resources"]["listeners"]:
            listener["address"]["socket_address"] = {
                "address": "127.0.0.1",
                "port_value": listener_ports[listener["name"]],
            }
        for cluster in config["static_resources"]["clusters"]:
            assert cluster.pop("type") == "STRICT_DNS" and cluster.pop("load_assignment")
            for dns_only in ("dns_refresh_rate", "respect_dns_ttl"):
                cluster.pop(dns_only)
            cluster["type"] = "EDS"
            cluster["eds_cluster_config"] = {
                "eds_config": {
                    "resource_api_version": "V3",
                    "path_config_source": {
                        "path": str(self._endpoints_file(cluster["name"])),
                        "watched_directory": {"path": str(self.directory)},
                    },
                }
            }
        config["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        config["node"] = {"id": "gateway", "cluster": "mmrerank-envoy"}  # file-based EDS wants a node identity
        self.route_to([])
        config_path = self.directory / "envoy.yaml"
        config_path.write_text(yaml.safe_dump(config))
        log = (self.directory / "envoy.log").open("wb")
        self.process = subprocess.Popen(
            [envoy_binary(), "-c", str(config_path), "--base-id", str(self.admin_port), "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self._wait_until_live()

    def _endpoints_file(self, cluster: str) -> Path:
        return self.directory / f"{cluster}.eds.yaml"

    def route_to(self, replicas: Sequence[BackgroundServer]) -> None:
        """Send to these replicas from now on (Kubernetes: the ready pods behind `mmrerank-pods`)."""
        for cluster, port in POD_PORTS.items():
            endpoints = []
            for replica in replicas:
                endpoint: dict = {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": getattr(replica, port)}}
                }
                if cluster != "rerank_api":
                    endpoint["health_check_config"] = {"port_value": replica.api_port}
                endpoints.append({"endpoint": endpoint})
            assignment = {
                "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": cluster,
                "endpoints": [{"lb_endpoints": endpoints}],
            }
            staged = self.directory / f".{cluster}.staged"
            staged.write_text(yaml.safe_dump({"version_info": str(time.monotonic_ns()), "resources": [assignment]}))
            os.replace(staged, self._endpoints_file(cluster))  # Envoy reloads on the move

    def healthy_endpoints(self, cluster: str) -> int:
        """How many of `cluster`'s endpoints Envoy holds healthy now (from its admin page)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/clusters", timeout=5) as response:
            lines = response.read().decode().splitlines()
        return sum(1 for line in lines if line.startswith(f"{cluster}::") and line.endswith("::health_flags::healthy"))

    def wait_for_healthy(self, count: int, timeout: float = 30) -> None:
        """Until every cluster holds exactly `count` healthy endpoints."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.healthy_endpoints(cluster) == count for cluster in POD_PORTS):
                return
            time.sleep(0.2)
        raise AssertionError(f"Envoy never held {count} healthy endpoints per cluster:\n{self.log_tail()}")

    def _wait_until_live(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"envoy exited:\n{self.log_tail()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"envoy did not start:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of Envoy's log."""
        return "\n".join((self.directory / "envoy.log").read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop Envoy and wait for it."""
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
