"""Pipeline groups as a validator sees them in one window's uploads (docs/pipeline.md "In the
network"): whose data a stage was trained on, whether its group claim holds, and which of its
partners' updates it is measured next to.

Every reader already checked a claim's own layout (``protocol.acceptance.stage_part``); what is
left needs the window's other uploads, so it lives here, apart from the validator's loop.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping

from compression import StageClaim
from compression.sparse import SparseUpdate
from neurons.fetch import FetchedPayload
from protocol.acceptance import Stage1Result


def claim_of(payload: FetchedPayload) -> StageClaim | None:
    return payload.decoded.manifest.pipeline_stage if payload.ok else None


def data_uid(payload: FetchedPayload) -> int:
    """Whose assignment the payload was trained on: its own uid's, or its pipeline group's."""
    claim = payload.decoded.manifest.pipeline_stage
    return payload.uid if claim is None else claim.data_uid


def stage_group_problems(fetched: dict[int, FetchedPayload], results: dict[int, Stage1Result]) -> dict[int, str]:
    """uid -> why its pipeline-stage claim does not hold, for stages other than 0 still in the running.

    A stage S > 0 trained on its group's data, the assignment of the group's stage 0 (``data_uid``).
    The claim holds when that uid uploaded this window a stage-0 payload of the same group and
    layout: otherwise any miner could name any uid's data as its own (and be measured on data
    another miner trained on). Stage 0's own claim was checked by every reader (data_uid = uid)."""
    problems = {}
    for uid, f in sorted(fetched.items()):
        claim = f.decoded.manifest.pipeline_stage if f.ok and results[uid].passed else None
        if claim is None or claim.index == 0:
            continue
        lead = fetched.get(claim.data_uid)
        lead_claim = claim_of(lead) if lead is not None else None
        if lead_claim is None or (lead_claim.group, lead_claim.n_stages, lead_claim.index) != (
            claim.group, claim.n_stages, 0
        ):
            problems[uid] = (f"claims stage {claim.index}/{claim.n_stages} of group {claim.group!r} on uid "
                             f"{claim.data_uid}'s data, but uid {claim.data_uid} uploaded no stage 0 of that group")
    return problems


def stage_contexts(claims: Mapping[int, StageClaim | None]) -> dict[int, tuple[int, ...]]:
    """uid -> the uids of its group partners to apply before its own update is measured, from the
    claims of the window's uploads that passed stage 1 (None: a whole-model upload).

    A stage's update was trained next to its partners' updates of the other layers, and alone on
    θ_w it shows only part of its edge: the tiny model's calibration paid honest stages less
    often than full miners (docs/scoring.md "Pipeline stages"). Measured on θ_w plus its
    partners' updates, a stage is still judged on what its *own* update adds on its group's data
    (a stage that did not train its layers adds nothing there, whoever its partners are), but
    with the rest of the group's window in place.

    A partner is the one upload of another index of the same group (name, size, stage-0 uid)
    that passed stage 1. Stage 0 is the uid the group's data belongs to; for another index, when
    several uploads claim it, none of them is anyone's partner, so no claimant can choose what an
    honest stage is measured next to by crowding in."""
    members: dict[tuple[str, int, int], dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for uid, claim in sorted(claims.items()):
        if claim is not None and (claim.index > 0 or claim.data_uid == uid):
            members[(claim.group, claim.n_stages, claim.data_uid)][claim.index].append(uid)
    contexts = {}
    for by_index in members.values():
        for index, claimants in by_index.items():
            partners = tuple(sorted(c[0] for i, c in by_index.items() if i != index and len(c) == 1))
            for uid in claimants:
                if partners:
                    contexts[uid] = partners
    return contexts


def partner_update(updates: Mapping[int, SparseUpdate], partners: Collection[int]) -> SparseUpdate:
    """The partners' updates as one. Their parameters are disjoint (each holds exactly its
    canonical layer range, checked by every reader); were one named twice, the first is kept."""
    merged: SparseUpdate = {}
    for uid in partners:
        for name, tensor in updates[uid].items():
            merged.setdefault(name, tensor)
    return merged
