"""Was an upload on time? Judged by the storage server's LastModified, never a local clock.

S3 servers report LastModified with one-second resolution (HEAD carries an HTTP date; SeaweedFS
and R2 truncate listings too), so a stamp ``t`` means the upload finished somewhere in
``[t, t + resolution)``. An upload is on time when that interval meets the slot
``[slot_start, slot_end]``: the benefit of the doubt is at most ``resolution`` at the slot's
start, and nothing at its end (a stamp after ``slot_end`` is late for certain).
"""

from __future__ import annotations

import enum

from storage.store import ObjectInfo

DEFAULT_RESOLUTION_S = 1.0


class UploadTiming(enum.Enum):
    EARLY = "early"
    ON_TIME = "on_time"
    LATE = "late"


def upload_timing(
    info: ObjectInfo,
    slot_start: float,
    slot_end: float,
    *,
    resolution: float = DEFAULT_RESOLUTION_S,
) -> UploadTiming:
    """Classify an upload against a slot given as POSIX seconds (from chain block timestamps)."""
    if slot_end < slot_start:
        raise ValueError(f"slot ends ({slot_end}) before it starts ({slot_start})")
    if resolution < 0:
        raise ValueError(f"resolution must be >= 0, got {resolution}")
    stamp = info.last_modified.timestamp()
    if stamp > slot_end:
        return UploadTiming.LATE
    # the true finish time lies in [stamp, stamp + resolution): early only if all of it is
    early = stamp < slot_start if resolution == 0 else stamp + resolution <= slot_start
    if early:
        return UploadTiming.EARLY
    return UploadTiming.ON_TIME


def uploaded_in_slot(
    info: ObjectInfo,
    slot_start: float,
    slot_end: float,
    *,
    resolution: float = DEFAULT_RESOLUTION_S,
) -> bool:
    """True when the server's LastModified places the upload inside ``[slot_start, slot_end]``."""
    return upload_timing(info, slot_start, slot_end, resolution=resolution) is UploadTiming.ON_TIME
