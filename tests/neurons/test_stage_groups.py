"""The validator's check of pipeline-group claims (``stage_group_problems``), whose data a
payload is measured on (``data_uid``) and next to which partners (``stage_contexts``), on
hand-built fetch results: a stage S > 0 counts only when its lead (the claim's ``data_uid``)
uploaded this window's stage 0 of the same group."""

from __future__ import annotations

import torch

from compression import DecodedPayload, PayloadManifest, StageClaim
from compression.sparse import SparseTensor
from neurons.fetch import FetchedPayload
from neurons.stage_groups import claim_of, data_uid, partner_update, stage_contexts, stage_group_problems
from protocol.acceptance import RejectReason, Stage1Result

LEAD, SECOND, THIRD = 10, 11, 12


def stage(index: int, lead: int = LEAD, group: str = "grp-1", n_stages: int = 2) -> StageClaim:
    """A claim of stage ``index`` (the range is the reader's business, not this check's)."""
    return StageClaim(group=group, index=index, n_stages=n_stages, layer_start=index, layer_stop=index + 1,
                      data_uid=lead)


def fetched(uid: int, claim: StageClaim | None = None, result: Stage1Result | None = None) -> FetchedPayload:
    """What the fetch returns for an accepted payload of ``uid`` (or ``result``, e.g. a rejection)."""
    manifest = PayloadManifest(run_id="r", window=1, uid=uid, hotkey="hk", global_step=0, names_digest="",
                               shapes=[], pipeline_stage=claim)
    return FetchedPayload(uid, result or Stage1Result.accept(uid), decoded=DecodedPayload(manifest, b"", {}))


def missing(uid: int) -> FetchedPayload:
    return FetchedPayload(uid, Stage1Result.reject(uid, RejectReason.MISSING, "no payload"))


def problems(*payloads: FetchedPayload, results: dict[int, Stage1Result] | None = None) -> dict[int, str]:
    window = {p.uid: p for p in payloads}
    return stage_group_problems(window, {u: p.result for u, p in window.items()} | (results or {}))


def test_a_whole_group_and_whole_model_payloads_pass():
    assert problems(fetched(LEAD, stage(0)), fetched(SECOND, stage(1)), fetched(THIRD)) == {}


def test_a_group_of_three_passes_and_each_later_stage_names_the_same_lead():
    group = [fetched(LEAD, stage(0, n_stages=3)), fetched(SECOND, stage(1, n_stages=3)),
             fetched(THIRD, stage(2, n_stages=3))]
    assert problems(*group) == {}


def assert_ungrouped(found: dict[int, str], uid: int = SECOND, group: str = "grp-1") -> None:
    assert set(found) == {uid}
    assert repr(group) in found[uid] and f"uid {LEAD}" in found[uid], found[uid]


def test_a_lead_that_uploaded_nothing_leaves_its_stages_ungrouped():
    assert_ungrouped(problems(missing(LEAD), fetched(SECOND, stage(1))))


def test_a_lead_absent_from_the_window_leaves_its_stages_ungrouped():
    assert_ungrouped(problems(fetched(SECOND, stage(1))))


def test_a_lead_that_sent_a_whole_model_payload_is_no_stage_0():
    assert_ungrouped(problems(fetched(LEAD), fetched(SECOND, stage(1))))


def test_a_lead_of_another_group_or_layout_is_no_stage_0():
    assert_ungrouped(problems(fetched(LEAD, stage(0, group="other")), fetched(SECOND, stage(1))))
    assert_ungrouped(problems(fetched(LEAD, stage(0, n_stages=3)), fetched(SECOND, stage(1))))


def test_a_lead_that_is_itself_a_later_stage_is_no_stage_0():
    found = problems(fetched(LEAD, stage(1, lead=THIRD)), fetched(SECOND, stage(1)))
    assert set(found) == {LEAD, SECOND}  # LEAD's own lead (THIRD) uploaded nothing either
    assert "'grp-1'" in found[SECOND] and f"uid {LEAD}" in found[SECOND]


def test_a_stage_naming_itself_as_lead_is_ungrouped():
    found = problems(fetched(SECOND, stage(1, lead=SECOND)))
    assert set(found) == {SECOND} and f"uid {SECOND}'s data" in found[SECOND]


def test_a_lead_rejected_by_its_fetch_leaves_its_stages_ungrouped():
    """A stage 0 the readers refused (bad signature, say) did not upload a stage 0 that counts."""
    refused = fetched(LEAD, stage(0), Stage1Result.reject(LEAD, RejectReason.BAD_SIGNATURE, "bad signature"))
    assert_ungrouped(problems(refused, fetched(SECOND, stage(1))))


def test_stage_0_is_never_flagged():
    """Its claim (data_uid = its own uid) was checked by every reader; it needs no partner."""
    assert problems(fetched(LEAD, stage(0)), fetched(THIRD, stage(0, lead=THIRD, group="alone"))) == {}
    # naming another uid's data is refused by every reader (protocol.acceptance.stage_part), not here
    assert problems(fetched(THIRD, stage(0, lead=99))) == {}


def test_only_payloads_still_in_the_running_are_judged():
    """A later stage already rejected (here: out of sync) keeps its reason, not a second one."""
    out_of_sync = {SECOND: Stage1Result.reject(SECOND, RejectReason.OUT_OF_SYNC, "trained from another θ")}
    assert problems(fetched(SECOND, stage(1)), results=out_of_sync) == {}
    assert problems(missing(SECOND)) == {}


def test_two_groups_in_one_window_are_told_apart():
    window = [fetched(LEAD, stage(0)), fetched(SECOND, stage(1)),
              fetched(20, stage(0, lead=20, group="grp-2")), fetched(21, stage(1, lead=20, group="grp-2")),
              fetched(22, stage(1, lead=20, group="grp-1"))]  # names grp-1 on grp-2's lead
    found = problems(*window)
    assert set(found) == {22} and "'grp-1'" in found[22] and "uid 20" in found[22]


def test_ungrouped_is_excused():
    from protocol.acceptance import EXCUSED_REASONS

    assert RejectReason.UNGROUPED in EXCUSED_REASONS and not Stage1Result.reject(1, RejectReason.UNGROUPED).is_fault


def test_data_uid_is_the_claims_lead_for_stages_and_the_own_uid_otherwise():
    assert data_uid(fetched(SECOND, stage(1))) == LEAD
    assert data_uid(fetched(LEAD, stage(0))) == LEAD
    assert data_uid(fetched(THIRD)) == THIRD


# --- stage_contexts: which partners' updates a stage is measured next to ---------------------------

def contexts(*payloads: FetchedPayload, passed: set[int] | None = None) -> dict[int, tuple[int, ...]]:
    window = {p.uid: p for p in payloads}
    passed = passed if passed is not None else {u for u, p in window.items() if p.ok}
    return stage_contexts({u: claim_of(window[u]) for u in passed})


def test_each_stage_of_a_group_is_measured_next_to_the_others_and_full_miners_alone():
    assert contexts(fetched(LEAD, stage(0)), fetched(SECOND, stage(1)), fetched(THIRD)) == {
        LEAD: (SECOND,), SECOND: (LEAD,)}
    three = [fetched(LEAD, stage(0, n_stages=3)), fetched(SECOND, stage(1, n_stages=3)),
             fetched(THIRD, stage(2, n_stages=3))]
    assert contexts(*three) == {LEAD: (SECOND, THIRD), SECOND: (LEAD, THIRD), THIRD: (LEAD, SECOND)}


def test_a_stage_whose_partners_did_not_pass_is_measured_alone():
    assert contexts(fetched(LEAD, stage(0)), fetched(SECOND, stage(1)), passed={LEAD}) == {}
    assert contexts(fetched(LEAD, stage(0)), missing(SECOND)) == {}


def test_a_crowded_index_is_nobodys_partner_so_a_claimant_cannot_choose_an_honest_stages_baseline():
    """Two uploads claim stage 1 of LEAD's group: stage 0 is measured alone, and each claimant of
    stage 1 next to stage 0 only (what it adds on top of stage 0's update is still its own)."""
    found = contexts(fetched(LEAD, stage(0)), fetched(SECOND, stage(1)), fetched(THIRD, stage(1)))
    assert found == {SECOND: (LEAD,), THIRD: (LEAD,)}


def test_groups_are_told_apart_by_name_size_and_lead():
    window = [fetched(LEAD, stage(0)), fetched(SECOND, stage(1)),
              fetched(20, stage(0, lead=20, group="grp-2")), fetched(21, stage(1, lead=20, group="grp-2")),
              fetched(22, stage(1, lead=20, group="grp-1")),  # grp-1's name on grp-2's lead: its own group
              fetched(23, stage(1, n_stages=3))]  # a 3-stage group on LEAD: no stage 0 of that size
    assert contexts(*window) == {LEAD: (SECOND,), SECOND: (LEAD,), 20: (21,), 21: (20,)}


def test_a_stage_0_naming_another_uids_data_leads_no_group():
    # every reader refuses it (protocol.acceptance.stage_part); were it ever passed, it is nobody's lead
    assert contexts(fetched(THIRD, stage(0, lead=LEAD)), fetched(SECOND, stage(1))) == {}


def test_partner_update_joins_disjoint_updates_and_keeps_the_first_of_a_name_named_twice():
    a = {"layers.0.w": SparseTensor((4,), torch.tensor([0]), torch.tensor([1.0]))}
    b = {"layers.1.w": SparseTensor((4,), torch.tensor([1]), torch.tensor([2.0]))}
    c = {"layers.1.w": SparseTensor((4,), torch.tensor([2]), torch.tensor([3.0]))}
    assert partner_update({1: a, 2: b, 3: c}, (1, 2)) == a | b
    assert partner_update({1: a, 2: b, 3: c}, (2, 3))["layers.1.w"] is b["layers.1.w"]
