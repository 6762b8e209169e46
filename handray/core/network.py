"""This machine's address as a Ray cluster sees it, with a port free on it."""

from __future__ import annotations

import socket


def address_with_free_port() -> str:
    """This process's node address and a port free on it, as `host:port` (`[host]:port` for
    IPv6): for TensorFlow's collective ops, or a local Ray cluster's GCS, to listen on."""
    import ray

    host = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
