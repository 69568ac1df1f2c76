"""Peers and the trust boundary, private seeds, and the libp2p transport (`dht`) on loopback."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import List

import pytest
from helpers import MakeNode, eventually, free_udp_port, wait_for_seed

import crabnet
from crabnet import _crabnet

HEX16 = re.compile(r"^[0-9a-f]{16}$")


def test_peers_are_typed_and_announced_by_events(trio: List[crabnet.Node]) -> None:
    alice, bob, carol = trio
    peers = sorted(alice.peers(), key=lambda p: p.name)
    assert all(isinstance(p, crabnet.PeerInfo) for p in peers)
    assert [(p.name, p.node_id, p.addresses) for p in peers] == [
        ("bob", bob.node_id, ("memory:bob",)),
        ("carol", carol.node_id, ("memory:carol",)),
    ]
    for p in peers:
        assert HEX16.match(p.fingerprint), p.fingerprint
        assert p.key_epoch >= 0 and 0 < p.first_seen <= p.last_seen
    assert alice.overview().peers == 2
    assert {p.node_id for p in bob.wait_for_peers(2, timeout=1)} == {alice.node_id, carol.node_id}
    hash(peers[0])

    discovered = [e for e in alice.events_after(0) if isinstance(e, crabnet.PeerDiscovered)]
    assert {(e.node_id, e.name, e.addresses) for e in discovered} == {
        (p.node_id, p.name, p.addresses) for p in peers
    }
    assert "PeerDiscovered(seq=" in repr(discovered[0])


def test_wait_for_peers_times_out_with_a_network_error(make_node: MakeNode) -> None:
    node = make_node("alone", hub=crabnet.MemoryHub())
    started = time.monotonic()
    with pytest.raises(crabnet.NetworkError, match="knows 0 peers"):
        node.wait_for_peers(1, timeout=0.2)
    assert 0.15 < time.monotonic() - started < 3
    with pytest.raises(crabnet.ValidationError, match="timeout"):
        node.wait_for_peers(1, timeout=-1)
    with pytest.raises(crabnet.ValidationError, match="count"):
        node.wait_for_peers(-1)
    with pytest.raises(TypeError, match="timeout"):
        node.wait_for_peers(1, timeout="soon")  # type: ignore[arg-type]


def test_reject_reasons_match_the_core() -> None:
    assert {r.value for r in crabnet.RejectReason} == set(_crabnet.REJECT_REASONS)
    assert crabnet.RejectReason("unknown_sender") == "unknown_sender"
    assert str(crabnet.RejectReason.BAD_SIGNATURE) == "bad_signature"


def test_messages_from_a_node_without_a_verified_hello_are_rejected(make_node: MakeNode) -> None:
    # a sends to b, b to nobody. a's only hello (at start) went out before b was listening, so
    # b cannot check a's signatures: a's seed is rejected as from an unknown sender.
    port_a, port_b = free_udp_port(), free_udp_port()
    a = make_node(
        "a",
        {"network": {"hello_interval_secs": 3600, "sync_interval_secs": 3600}},
        bind=f"127.0.0.1:{port_a}",
        peers=[f"127.0.0.1:{port_b}"],
    )
    time.sleep(0.2)  # a's start-up hello is gone
    b = make_node("b", bind=f"127.0.0.1:{port_b}")
    with b.events(timeout=10) as events:
        seed = a.publish("true")
        rejected = events.wait_for(lambda e: isinstance(e, crabnet.MessageRejected), 10)
    assert isinstance(rejected, crabnet.MessageRejected)
    assert rejected.reason is crabnet.RejectReason.UNKNOWN_SENDER
    assert rejected.sender == a.node_id and rejected.message_kind == "seed_created"
    assert rejected.violation is None and "hello" in rejected.detail
    assert b.overview().counters["rejected.unknown_sender"] == 1
    assert b.peers() == []
    with pytest.raises(crabnet.NotFoundError):
        b.seed(seed)


def test_private_seeds_reach_only_their_audience(trio: List[crabnet.Node]) -> None:
    alice, bob, carol = trio
    bob_info = next(p for p in alice.peers() if p.node_id == bob.node_id)
    for audience in ([bob], [bob.node_id], [bob_info]):
        view = alice.publish("echo secret", private_to=audience, max_bids=1)
        assert view.seed.audience == (bob.node_id,) and view.seed.private
        seen = wait_for_seed(bob, view.id)
        assert seen.seed.audience == (bob.node_id,) and seen.seed.command == "echo secret"

    # bob bids, wins, runs it; alice settles; carol never learns of it.
    bob.bid(view, 5)
    wait_for_seed(bob, view.id, lambda v: v.award is not None)
    bob.claim(view)
    assert bob.run(view).status is crabnet.SeedStatus.COMPLETED
    wait_for_seed(alice, view.id, lambda v: v.status == "completed")
    alice.settle(view)
    wait_for_seed(bob, view.id, lambda v: v.status == "settled")
    assert eventually(lambda: carol.overview().counters.get("messages.not_for_us", 0) >= 5)
    with pytest.raises(crabnet.NotFoundError):
        carol.seed(view)
    assert carol.seeds() == []

    public = alice.publish("echo public")
    assert public.seed.audience == () and not public.seed.private
    wait_for_seed(carol, public.id)


def test_private_seed_errors(trio: List[crabnet.Node], tmp_path: Path) -> None:
    alice, bob, _ = trio
    stranger = "ab" * 32
    with pytest.raises(crabnet.NetworkError, match="no hello from it yet"):
        alice.publish("true", private_to=[stranger])
    with pytest.raises(crabnet.ValidationError, match="publisher"):
        alice.publish("true", private_to=[alice])
    with pytest.raises(crabnet.ValidationError, match="twice"):
        alice.publish("true", private_to=[bob, bob.node_id])
    with pytest.raises(crabnet.ValidationError):
        alice.publish("true", private_to=["not a node id"])
    with pytest.raises(TypeError, match="not one node"):
        alice.publish("true", private_to=bob.node_id)
    with pytest.raises(TypeError, match="PeerInfo or Node"):
        alice.publish("true", private_to=[42])  # type: ignore[list-item]
    with pytest.raises(crabnet.StoppedError):
        alice.publish("true", private_to=[crabnet.Node(data_dir=tmp_path / "never")])
    assert alice.seeds() == []


def tcp_address(node: crabnet.Node) -> str:
    found: List[str] = []

    def listening() -> bool:
        found[:] = [a for a in node.overview().addresses if "/tcp/" in a]
        return bool(found)

    assert eventually(listening, 10), node.overview().addresses
    return found[0]


def test_two_dht_nodes_on_loopback(make_node: MakeNode) -> None:
    a = make_node("a", transport="dht")
    address = tcp_address(a)
    assert address.startswith("/ip4/127.0.0.1/tcp/")
    b = make_node("b", peers=[address])  # a multiaddress: transport "dht"
    assert a.transport == b.transport == "dht"
    assert [p.node_id for p in a.wait_for_peers(1, timeout=20)] == [b.node_id]
    assert [p.node_id for p in b.wait_for_peers(1, timeout=20)] == [a.node_id]
    assert b.overview().transport == "dht" and b.overview().peers == 1

    with b.events(timeout=20) as events:
        seed = a.publish("echo over libp2p", max_bids=1)
        published = events.wait_for(lambda e: isinstance(e, crabnet.SeedPublished), 20)
    assert isinstance(published, crabnet.SeedPublished) and published.seed_id == seed.id
    b.bid(seed, 7)
    awarded = wait_for_seed(a, seed.id, lambda v: v.award is not None, timeout=20)
    assert awarded.award is not None and awarded.award.winner_node == b.node_id

    statuses = [e for e in a.events_after(0) if isinstance(e, crabnet.TransportStatus)]
    assert statuses and all(e.transport == "dht" for e in statuses)
    assert any("libp2p started" in e.detail for e in statuses), statuses


def test_dht_falls_back_to_udp_when_libp2p_cannot_start(make_node: MakeNode) -> None:
    port = free_udp_port()
    node = make_node(
        "f",
        listen=["/ip4/127.0.0.1/tcp/not-a-port"],  # no such multiaddress: libp2p cannot start
        udp_fallback=f"127.0.0.1:{port}",
    )
    assert node.transport == "dht"

    def fell_back() -> bool:
        return any(
            isinstance(e, crabnet.TransportStatus) and "using UDP" in e.detail
            for e in node.events_after(0)
        )

    assert eventually(fell_back, 10), node.events_after(0)
    assert node.overview().transport == "udp"
    assert f"udp:127.0.0.1:{port}" in node.overview().addresses


def test_dht_settings(make_node: MakeNode, tmp_path: Path) -> None:
    with pytest.raises(crabnet.NetworkError, match="invalid multiaddress"):
        crabnet.Node(data_dir=tmp_path / "bad", listen=["garbage"]).start()
    with pytest.raises(crabnet.ConfigError, match="invalid libp2p settings"):
        crabnet.Node(data_dir=tmp_path / "bad", udp_fallback="not an address").start()
    with pytest.raises(crabnet.ValidationError, match="only used with transport 'dht'"):
        crabnet.Node(data_dir=tmp_path / "x", transport="udp", mdns=True)
    with pytest.raises(crabnet.ValidationError, match="only used with transport 'dht'"):
        crabnet.Node(data_dir=tmp_path / "x", hub=crabnet.MemoryHub(), bootstrap=["/ip4/1"])
    with pytest.raises(crabnet.ValidationError, match="only used with transport 'udp'"):
        crabnet.Node(data_dir=tmp_path / "x", transport="dht", bind="127.0.0.1:1")
    with pytest.raises(crabnet.ValidationError, match="give udp_fallback too"):
        crabnet.Node(data_dir=tmp_path / "x", transport="dht", udp_peers=["127.0.0.1:1"])
    with pytest.raises(crabnet.ValidationError, match="peers are only used"):
        crabnet.Node(data_dir=tmp_path / "x", transport="offline", peers=["127.0.0.1:1"])
    with pytest.raises(TypeError, match="not one string"):
        crabnet.Node(data_dir=tmp_path / "x", transport="dht", listen="/ip4/127.0.0.1/tcp/0")
    # Listen addresses chosen by the caller; the guessed transport is dht.
    node = make_node("l", listen=["/ip4/127.0.0.1/tcp/0"])
    assert node.transport == "dht"
    assert all("/tcp/" in a for a in [tcp_address(node), *node.overview().addresses])
