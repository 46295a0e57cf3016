from protocol.chain import Metagraph, NeuronInfo
from protocol.gather_set import GatherSet, consensus_weights, select_gather_set


def mg(validators: list[tuple[int, float, dict[int, float]]], miners: list[int]) -> Metagraph:
    ns = [NeuronInfo(u, f"v{u}", "c", stake, True, weights=w) for u, stake, w in validators]
    ns += [NeuronInfo(u, f"m{u}", "c", 0.0, False) for u in miners]
    return Metagraph(netuid=1, block=100, neurons=tuple(ns))


def test_new_network_gathers_every_candidate_in_uid_order():
    g = select_gather_set(mg([(0, 10.0, {})], [5, 3, 9, 1]), 2, 1, [9, 3, 1, 5, 42])
    assert g == GatherSet(gather=[1, 3, 5, 9], reserves=[])  # 42 is not registered


def test_only_weighted_miners_are_gathered_or_reserves():
    graph = mg(
        [(0, 30.0, {5: 1.0, 3: 1.0}), (1, 10.0, {9: 1.0}), (2, 50.0, {}), (8, 0.0, {1: 1.0})],
        [3, 4, 5, 6, 7, 9, 11],
    )
    cw = consensus_weights(graph)
    assert cw == {5: 0.375, 3: 0.375, 9: 0.25}  # validator 8 has no stake, 2 set no weights
    g = select_gather_set(graph, 2, 3, [3, 4, 5, 6, 7, 9, 11])
    assert g.gather == [3, 5]  # tie by uid
    assert g.reserves == [9]  # 4, 6, 7 and 11 have no weight: they are scored, not aggregated


def test_a_miner_every_validator_rejects_is_never_aggregated_even_with_free_slots():
    graph = mg([(0, 10.0, {2: 1.0, 3: 0.0}), (1, 10.0, {2: 1.0})], [2, 3, 4])
    assert select_gather_set(graph, 20, 10, [2, 3, 4]) == GatherSet(gather=[2], reserves=[])


def test_weights_only_on_the_owner_count_as_a_new_network():
    graph = mg([(0, 10.0, {99: 1.0})], [2, 3])
    assert select_gather_set(graph, 20, 10, [2, 3]) == GatherSet(gather=[2, 3], reserves=[])
