from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.commitment import MAX_COMMITMENT_BYTES, BucketCommitment, CommitmentError

HEX = "0123456789abcdef"


def test_r2_commitment_fits_and_round_trips():
    c = BucketCommitment.for_r2("a1" * 16, "tessera-miner-bucket-00042", "b2" * 16, "c3" * 32)
    text = c.encode()
    assert len(text.encode()) <= MAX_COMMITMENT_BYTES
    assert BucketCommitment.decode(text) == c
    assert c.endpoint_url == f"https://{'a1' * 16}.r2.cloudflarestorage.com" and c.region == "auto"


def test_any_endpoint_round_trips_with_its_region():
    c = BucketCommitment(
        endpoint_url="http://127.0.0.1:8333", bucket="miner-0", region="us-east-1",
        access_key_id="AKIAIOSFODNN7EXAMPLE", secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    )
    assert BucketCommitment.decode(c.encode()) == c


def test_secret_stays_out_of_repr():
    c = BucketCommitment.for_r2("a1" * 16, "bucket", "b2" * 16, "c3" * 32)
    assert "c3c3" not in repr(c)


def test_too_long_is_refused_not_truncated():
    c = BucketCommitment(endpoint_url="https://" + "e" * 60 + ".example.com", bucket="b" * 63,
                         access_key_id="k" * 20, secret_access_key="s" * 40)
    with pytest.raises(CommitmentError, match="bytes"):
        c.encode()


@pytest.mark.parametrize(
    "text",
    ["", "2abc", "1only,three,fields", "1" + "x" * 200, "1.!!!!,bucket,,k,s",
     "1notanaccount,bucket,,key,secret", "1http://h,BAD_BUCKET,,k,s", "1http://h,bucket,,,s",
     # decode, but no client could be built from them
     "1http://h,bucket,us-east-1!,k,s", "1http://h,bucket,-x,k,s", "1http://[::1,bucket,,k,s",
     "1http://[zz]:9,bucket,,k,s", "1http://h:99999,bucket,,k,s", "1http://h:0,bucket,,k,s",
     "1http://h:port,bucket,,k,s", "1http://u:p@h,bucket,,k,s", "1http://,bucket,,k,s",
     "1http://:9000,bucket,,k,s"],
)
def test_malformed_commitments_raise_a_typed_error(text):
    with pytest.raises(CommitmentError):
        BucketCommitment.decode(text)


_plain = st.text(alphabet=string.ascii_letters + string.digits + "/+=_-", min_size=1, max_size=24)
_hex = st.text(alphabet=HEX, min_size=16, max_size=32).filter(lambda s: len(s) % 2 == 0)
_bucket = st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}[a-z0-9]", fullmatch=True)


@given(
    endpoint=st.one_of(st.just("http://127.0.0.1:9000"), st.text(alphabet=HEX, min_size=32, max_size=32).map(
        lambda a: f"https://{a}.r2.cloudflarestorage.com")),
    bucket=_bucket, region=st.sampled_from(["auto", "us-east-1", "weur"]),
    key=st.one_of(_plain, _hex), secret=st.one_of(_plain, _hex),
)
def test_round_trip_property(endpoint, bucket, region, key, secret):
    c = BucketCommitment(endpoint_url=endpoint, bucket=bucket, region=region, access_key_id=key,
                         secret_access_key=secret)
    try:
        text = c.encode()
    except CommitmentError:
        return  # refusing is allowed; silently changing the value is not
    assert len(text.encode()) <= MAX_COMMITMENT_BYTES
    assert BucketCommitment.decode(text) == c


_FIELD = st.text(alphabet=string.printable, max_size=30)


@given(st.one_of(
    st.text(max_size=140),
    st.builds(lambda parts: "1" + ",".join(parts), st.lists(_FIELD, min_size=5, max_size=5)),
    st.builds(lambda e, r: f"1{e},bucket,{r},key,secret",
              st.from_regex(r"\Ahttps?://[\[\]:@a-z0-9.%-]{0,30}\Z"), st.text(max_size=12)),
))
@settings(max_examples=500, deadline=None)
def test_any_text_decodes_or_raises_commitment_error(text):
    try:
        c = BucketCommitment.decode(text)
    except CommitmentError:
        return
    assert isinstance(c, BucketCommitment)
