import datetime as dt

import pytest

from storage.slot import UploadTiming, upload_timing, uploaded_in_slot
from storage.store import ObjectInfo


def _at(seconds: float) -> ObjectInfo:
    return ObjectInfo("k", 1, dt.datetime.fromtimestamp(seconds, tz=dt.UTC))


def test_inside_slot_is_on_time() -> None:
    assert uploaded_in_slot(_at(1005), 1000.0, 1010.0)
    assert uploaded_in_slot(_at(1010), 1000.0, 1010.0)  # the end is inclusive


def test_after_slot_is_late_even_by_a_second() -> None:
    assert upload_timing(_at(1011), 1000.0, 1010.0) is UploadTiming.LATE


def test_before_slot_is_early() -> None:
    assert upload_timing(_at(990), 1000.0, 1010.0) is UploadTiming.EARLY
    assert upload_timing(_at(999), 1000.0, 1010.0) is UploadTiming.EARLY  # [999, 1000) is all early


def test_second_resolution_gets_benefit_of_doubt_at_start() -> None:
    # slot starts mid-second; a stamp truncated to 1000 may be an upload at 1000.7
    assert uploaded_in_slot(_at(1000), 1000.4, 1010.0)
    assert not uploaded_in_slot(_at(1000), 1000.4, 1010.0, resolution=0.0)
    assert uploaded_in_slot(_at(1000), 1000.0, 1010.0, resolution=0.0)


def test_bad_slot_rejected() -> None:
    with pytest.raises(ValueError):
        upload_timing(_at(1), 10.0, 5.0)
