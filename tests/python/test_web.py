"""The dashboard served from Python: the server `crabnet listen` runs, on an ephemeral
loopback port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from helpers import MakeNode

import crabnet


def get(url: str) -> "tuple[int, dict[str, object]]":
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_node_serves_the_dashboard_on_an_ephemeral_loopback_port(make_node: MakeNode) -> None:
    node = make_node("web")
    with node.serve_web() as web:
        assert web.url.startswith("http://127.0.0.1:") and not web.url.endswith(":0/")
        status, health = get(web.url + "health")
        assert status == 200
        assert health["status"] == "ok" and health["node_id"] == node.node_id
        # The dashboard page, and the API it reads.
        with urllib.request.urlopen(web.url, timeout=10) as response:
            assert response.status == 200
            assert "<title>Crabnet dashboard</title>" in response.read().decode()
        status, overview = get(web.url + "api/overview")
        assert status == 200
        assert overview["node"]["node_id"] == node.node_id  # type: ignore[index]
        node.stop()
        status, health = get(web.url + "health")
        assert status == 503
    assert web.closed
    with pytest.raises(OSError):
        get(web.url + "health")


def test_bad_web_settings_are_errors(make_node: MakeNode) -> None:
    node = make_node("web")
    with pytest.raises(crabnet.ConfigError, match="token"):
        node.serve_web("0.0.0.0:0")
    with pytest.raises(crabnet.ConfigError):
        node.serve_web("not an address")
    with pytest.raises(TypeError):
        node.serve_web(8080)  # type: ignore[arg-type]
