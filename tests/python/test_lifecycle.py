"""The whole task lifecycle across nodes, through the Python API, with typed results."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List

import pytest
from helpers import MakeNode, claimed, free_udp_port, make_pair, wait_for_seed

import crabnet


def test_full_lifecycle_across_three_nodes(trio: List[crabnet.Node]) -> None:
    alice, bob, carol = trio
    published = alice.publish(
        "echo crabnet; echo $((6 * 7))",
        description="answer",
        min_price=10,
        max_price=50,
        max_bids=2,
        timeout_secs=30,
    )
    assert isinstance(published, crabnet.SeedView)
    assert published.status is crabnet.SeedStatus.OPEN
    seed = published.seed
    assert isinstance(seed, crabnet.Seed)
    assert (seed.publisher, seed.min_price, seed.max_price, seed.max_bids) == (
        alice.node_id,
        10,
        50,
        2,
    )
    assert seed.description == "answer" and seed.bid_window_secs == 30  # the core's default

    wait_for_seed(bob, seed.id)
    wait_for_seed(carol, seed.id)
    bob.bid(seed.id, 30)
    carol.bid(published, 20)  # a SeedView works wherever a seed id does

    # Two bids of two: alice closes bidding; carol's lower price wins.
    awarded = wait_for_seed(alice, seed.id, lambda v: v.award is not None)
    assert awarded.award is not None
    assert isinstance(awarded.award, crabnet.Award)
    assert awarded.award.winner_node == carol.node_id
    assert awarded.award.price == 20
    assert len(awarded.bids) == 2 and all(isinstance(b, crabnet.Bid) for b in awarded.bids)
    assert {b.bidder for b in awarded.bids} == {bob.node_id, carol.node_id}

    wait_for_seed(bob, seed.id, lambda v: v.award is not None)
    with pytest.raises(crabnet.StateError, match="not the winning bidder"):
        bob.claim(seed.id)
    wait_for_seed(carol, seed.id, lambda v: v.award is not None)
    claimed = carol.claim(seed)
    assert claimed.status == crabnet.SeedStatus.CLAIMED
    assert isinstance(claimed.claim, crabnet.Claim) and claimed.claim.claimer == carol.node_id

    ran = carol.run(seed.id)
    assert ran.status == "completed"
    result = ran.result
    assert isinstance(result, crabnet.TaskResult)
    assert result.success and result.exit_code == 0 and not result.timed_out
    assert result.output_excerpt == "crabnet\n42\n"
    assert result.output_bytes == len("crabnet\n42\n") and len(result.output_sha256) == 64
    assert result.runner == carol.node_id
    # The command ran in carol's full task sandbox (default policy "required"), without network.
    assert isinstance(result.sandbox, crabnet.SandboxInfo)
    assert result.sandbox.level == "full" and result.sandbox.level is crabnet.SandboxLevel.FULL
    assert "landlock_fs" in result.sandbox.features and "seccomp" in result.sandbox.features
    assert isinstance(result.sandbox.features, tuple) and not result.sandbox.network

    wait_for_seed(alice, seed.id, lambda v: v.status == "completed")
    settled = alice.settle(seed.id, accept=True, note="thanks")
    assert settled.status is crabnet.SeedStatus.SETTLED
    assert isinstance(settled.settlement, crabnet.Settlement)
    assert settled.settlement.outcome is crabnet.SettlementOutcome.ACCEPTED
    assert (settled.settlement.amount, settled.settlement.note) == (20, "thanks")

    # Every node converges on the same state.
    finals = [wait_for_seed(n, seed.id, lambda v: v.status == "settled") for n in trio]
    assert all(v == finals[0] for v in finals)
    digests = {n.overview().state_digest for n in trio}
    assert len(digests) == 1

    assert seed.audience == () and not seed.private
    assert seed.network is False and seed.isolation is crabnet.SandboxLevel.FULL

    overview = alice.overview()
    assert isinstance(overview, crabnet.Overview)
    assert overview.node_id == alice.node_id and overview.name == "alice"
    assert overview.transport == "memory"
    assert overview.peers == 2 and overview.addresses == ("memory:alice",)
    assert overview.seeds_by_status[crabnet.SeedStatus.SETTLED] == 1
    assert overview.counters["messages.accepted"] >= 3
    assert overview.last_event_seq > 0
    sandbox = overview.sandbox
    assert isinstance(sandbox, crabnet.SandboxStatus)
    assert sandbox.policy == "required" and sandbox.policy is crabnet.SandboxPolicy.REQUIRED
    assert sandbox.level == "full" and sandbox.can_run and sandbox.missing == ()
    assert "landlock_fs" in sandbox.features and not sandbox.allow_network

    assert [v.id for v in bob.seeds()] == [seed.id]
    assert [v.id for v in bob.seeds(crabnet.SeedStatus.SETTLED)] == [seed.id]
    assert bob.seeds("open") == []


def test_reject_cancel_and_expiry(make_node: MakeNode) -> None:
    alice, bob = make_pair(make_node, publisher="alice", runner="bob")

    # Cancelled while bidding is open.
    first = alice.publish("true")
    cancelled = alice.cancel(first)
    assert cancelled.status is crabnet.SeedStatus.CANCELLED
    assert cancelled.cancelled_at is not None
    wait_for_seed(bob, first.id, lambda v: v.status == "cancelled")

    # Rejected: nothing is due.
    second = claimed(alice, bob, "exit 3", price=7)
    ran = bob.run(second)
    assert ran.result is not None and not ran.result.success and ran.result.exit_code == 3
    wait_for_seed(alice, second.id, lambda v: v.status == "completed")
    rejected = alice.settle(second, accept=False, note="wrong answer")
    assert rejected.settlement is not None
    assert rejected.settlement.outcome is crabnet.SettlementOutcome.REJECTED
    assert rejected.settlement.amount == 0

    # Expired: the bid window closes without bids.
    third = alice.publish("true", bid_window_secs=1)
    expired = wait_for_seed(alice, third.id, lambda v: v.status == "expired", timeout=10)
    assert expired.award is not None and expired.award.winner is None


def test_rotated_keys_keep_the_id_and_the_peers(make_node: MakeNode) -> None:
    alice, bob = make_pair(make_node, publisher="alice", runner="bob")
    rotation = alice.rotate_keys()
    assert isinstance(rotation, crabnet.KeyRotation)
    assert rotation.node_id == alice.node_id and rotation.key_epoch == 2
    assert rotation.rotated_at > 0 and len(rotation.signing_public) > 64
    # What Alice publishes with her new keys reaches Bob, who knows them.
    seed = alice.publish("true")
    wait_for_seed(bob, seed.id)
    (peer,) = [p for p in bob.peers() if p.node_id == alice.node_id]
    assert peer.key_epoch == 2
    assert alice.rotate_keys().key_epoch == 3


def test_domain_objects_are_frozen_hashable_and_readable(make_node: MakeNode) -> None:
    node = make_node("solo")
    view = node.publish("echo " + "x" * 100, max_bids=1)
    again = node.seed(view.id)
    assert view == again and hash(view) == hash(again)
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.status = crabnet.SeedStatus.SETTLED  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.seed.command = "rm -rf /"  # type: ignore[misc]
    assert isinstance(view.bids, tuple)
    text = repr(view)
    assert text.startswith("SeedView(seed=Seed(id='" + view.id + "'")
    assert "status=SeedStatus.OPEN" in text
    assert "x" * 100 not in text  # long strings are shortened
    assert dataclasses.asdict(view)["seed"]["command"] == view.seed.command
    overview = node.overview()
    hash(overview)
    assert "Overview(node_id=" in repr(overview)
    assert str(crabnet.SeedStatus.OPEN) == "open" and crabnet.SeedStatus("open") == "open"


def test_restart_keeps_identity_and_seeds(tmp_path: Path) -> None:
    node = crabnet.Node(data_dir=tmp_path / "n", name="n")
    with pytest.raises(crabnet.StoppedError):
        node.publish("true")
    with pytest.raises(crabnet.StoppedError):
        _ = node.node_id
    assert not node.running
    with node:
        assert node.running
        first_id = node.node_id
        seed = node.publish("true")
    assert not node.running
    with pytest.raises(crabnet.StoppedError):
        node.seeds()
    node.start()
    try:
        assert node.start() is node  # already running: nothing happens
        assert node.node_id == first_id
        assert node.seed(seed.id) == seed
        assert "running=True" in repr(node) and "'n'" in repr(node)
    finally:
        node.stop()
    node.stop()  # idempotent


def test_config_sources(tmp_path: Path) -> None:
    defaults = crabnet.default_config()
    assert {"data_dir", "name", "runner", "store", "events", "network"} <= set(defaults)
    toml = tmp_path / "node.toml"
    toml.write_text(f'name = "from-file"\ndata_dir = "{tmp_path / "d"}"\n[runner]\ncpu_seconds = 5\n')
    assert crabnet.load_config(toml)["runner"]["cpu_seconds"] == 5
    assert crabnet.config_from_toml('name = "x"')["name"] == "x"
    with crabnet.Node(toml) as node:
        assert node.name == "from-file"
        assert node.overview().data_dir == str(tmp_path / "d")
    with crabnet.Node(str(toml), name="renamed", data_dir=tmp_path / "e") as node:
        assert node.name == "renamed" and node.overview().data_dir == str(tmp_path / "e")
    with crabnet.Node({"data_dir": tmp_path / "f", "runner": {"cpu_seconds": 1}}) as node:
        assert node.overview().data_dir == str(tmp_path / "f")
    with pytest.raises(TypeError, match="JSON-like or paths"):
        crabnet.Node({"data_dir": object()})


def test_udp_transport_on_loopback(make_node: MakeNode) -> None:
    port_a, port_b = free_udp_port(), free_udp_port()
    a = make_node("a", bind=f"127.0.0.1:{port_a}", peers=[f"127.0.0.1:{port_b}"])
    b = make_node("b", transport="udp", bind=f"127.0.0.1:{port_b}", peers=[f"127.0.0.1:{port_a}"])
    assert a.transport == "udp" and a.overview().transport == "udp"
    assert a.overview().addresses == (f"udp:127.0.0.1:{port_a}",)
    # a's first hello went out before b was listening; b's hello made a answer with another.
    assert [p.node_id for p in a.wait_for_peers(1, timeout=10)] == [b.node_id]
    assert [p.node_id for p in b.wait_for_peers(1, timeout=10)] == [a.node_id]
    seed = a.publish("true", max_bids=1)
    wait_for_seed(b, seed.id)
    b.bid(seed, 5)
    awarded = wait_for_seed(a, seed.id, lambda v: v.award is not None)
    assert awarded.award is not None and awarded.award.winner_node == b.node_id


def test_offline_node_runs_a_claimed_task_and_sends_the_result_when_back(
    make_node: MakeNode,
) -> None:
    # A node may not bid on its own seed: "solo" wins one from a publisher on a hub, then runs
    # it offline (no transport) on the same data directory.
    hub = crabnet.MemoryHub()
    publisher = make_node("publisher", hub=hub)
    online = make_node("solo", hub=hub)
    for n in (publisher, online):
        n.wait_for_peers(1, timeout=10)
    seed = claimed(publisher, online, "printf done")
    online.stop()

    fresh = make_node("fresh")
    assert fresh.transport == "offline" and fresh.overview().transport is None
    assert fresh.peers() == [] and fresh.wait_for_peers(0, timeout=0) == []
    assert (fresh.overview().peers, fresh.overview().addresses) == (0, ())
    with pytest.raises(crabnet.StateError, match="may not bid on it"):
        fresh.bid(fresh.publish("true"), 1)

    node = make_node("solo")
    assert node.transport == "offline" and node.overview().transport is None
    assert [p.node_id for p in node.peers()] == [publisher.node_id]  # remembered
    assert node.overview().addresses == ()
    view = node.run(seed)
    assert view.result is not None and view.result.output_excerpt == "done"
    assert node.overview().outbox_pending > 0  # nobody to send to
    node.stop()

    # Back on the network, the result goes out and the publisher settles.
    back = make_node("solo", hub=hub)
    back.wait_for_peers(1, timeout=10)
    wait_for_seed(publisher, seed.id, lambda v: v.status == "completed")
    assert publisher.settle(seed).status is crabnet.SeedStatus.SETTLED
    wait_for_seed(back, seed.id, lambda v: v.status == "settled")


def test_nodes_bid_only_on_seeds_their_runner_policy_serves(make_node: MakeNode) -> None:
    hub = crabnet.MemoryHub()
    alice = make_node("alice", hub=hub)
    bob = make_node("bob", hub=hub)  # default runner config: no network for tasks
    carol = make_node("carol", {"runner": {"allow_network": True}}, hub=hub)
    for node in (alice, bob, carol):
        node.wait_for_peers(2, timeout=10)
    assert not bob.overview().sandbox.allow_network and carol.overview().sandbox.allow_network

    online = alice.publish("echo online", network=True, max_bids=1)
    assert online.seed.network is True and online.seed.isolation == "full"
    assert wait_for_seed(bob, online.id).seed.network is True  # the flag travels with the seed
    with pytest.raises(crabnet.RunnerError, match="network") as refused:
        bob.bid(online, 10)
    assert refused.value.kind == "runner"
    assert bob.seed(online).bids == ()  # no bid was placed
    wait_for_seed(carol, online.id)
    assert len(carol.bid(online, 10).bids) == 1  # runner.allow_network = true bids

    # A seed that only works under a weaker sandbox than bob builds: bob does not bid either.
    weak = alice.publish("true", isolation="partial")
    assert weak.seed.isolation is crabnet.SandboxLevel.PARTIAL and not weak.seed.network
    wait_for_seed(bob, weak.id)
    with pytest.raises(crabnet.RunnerError, match="sandbox level partial"):
        bob.bid(weak, 10)
    assert alice.publish("true", isolation=crabnet.SandboxLevel.NONE).seed.isolation == "none"
    with pytest.raises(crabnet.ValidationError, match="unknown variant"):
        alice.publish("true", isolation="airtight")
    with pytest.raises(TypeError):
        alice.publish("true", network="yes")  # type: ignore[arg-type]
