"""Replicated seeds (rule version 3) and reputation through the Python API: three runners, one
of which lies (the test-only ``runner.forge_output_hash``), on one in-memory hub."""

from __future__ import annotations

import pytest
from helpers import MakeNode, wait_for_seed

import crabnet


def test_a_replicated_seed_completes_with_the_honest_result(make_node: MakeNode) -> None:
    hub = crabnet.MemoryHub()
    publisher = make_node("publisher", hub=hub)
    honest = [make_node(name, hub=hub) for name in ("r0", "r1")]
    try:
        liar = make_node("liar", {"runner": {"forge_output_hash": True}}, hub=hub)
    except crabnet.ConfigError as e:
        # A release build (the wheel users get) refuses the test-only setting.
        assert "forge_output_hash" in str(e) and "release build" in str(e), str(e)
        pytest.skip("a release build: the lying runner is refused, as it must be")
    runners = [*honest, liar]
    for node in (publisher, *runners):
        node.wait_for_peers(3, timeout=10)

    published = publisher.publish("echo replicated", max_bids=3, replicas=3, quorum=2)
    seed = published.seed
    assert seed.rules == 3
    assert seed.replication == crabnet.Replication(replicas=3, quorum=2, max_replicas=3)
    assert seed.replication.hash is crabnet.OutputHash.COMBINED
    for node, price in zip(runners, (10, 20, 30)):
        wait_for_seed(node, seed.id)
        node.bid(seed.id, price)

    # The liar runs first: once two honest results agree, a replica may no longer claim.
    for node in (liar, *honest):
        me = node.node_id

        def awarded(v: crabnet.SeedView) -> bool:
            return any(r.runner == me for r in v.replicas)

        wait_for_seed(node, seed.id, awarded)
        node.claim(seed.id)
        node.run(seed.id)

    done = wait_for_seed(publisher, seed.id, lambda v: v.status is crabnet.SeedStatus.COMPLETED)
    assert all(isinstance(r, crabnet.ReplicaView) for r in done.replicas)
    standing = {r.runner: r.standing for r in done.replicas}
    assert standing[liar.node_id] is crabnet.ReplicaStanding.DISSENTED
    assert {standing[n.node_id] for n in honest} == {crabnet.ReplicaStanding.AGREED}
    assert done.result is not None
    lie = next(r for r in done.replicas if r.runner == liar.node_id)
    assert lie.result is not None and lie.result.output_sha256 != done.result.output_sha256

    settled = publisher.settle(seed.id)
    assert settled.settlement is not None
    assert set(settled.settlement.paid) == {n.node_id for n in honest}
    assert settled.settlement.amount == 10 + 20

    reputation = {p.node_id: p.reputation for p in publisher.peers()}
    assert isinstance(reputation[liar.node_id], crabnet.Reputation)
    assert reputation[liar.node_id].dissented == 1
    assert reputation[honest[0].node_id].agreed == 1
    assert reputation[honest[0].node_id].settlements_accepted == 1


def test_replication_terms_are_checked(make_node: MakeNode) -> None:
    node = make_node("alone")
    with pytest.raises(crabnet.ValidationError, match="more than half"):
        node.publish("true", replicas=4, quorum=2)
    with pytest.raises(crabnet.ValidationError, match="max replicas"):
        node.publish("true", replicas=3, max_replicas=2)
    with pytest.raises(TypeError):
        node.publish("true", replicas=3, hash_stdout=1)  # type: ignore[arg-type]
    view = node.publish("true", replicas=2, hash_stdout=True)
    assert view.seed.replication is not None
    assert view.seed.replication.quorum == 2
    assert view.seed.replication.hash is crabnet.OutputHash.STDOUT
    assert node.publish("true").seed.replication is None
