"""The endpoint policy: peer endpoints resolving to loopback, link-local, private or metadata
addresses are refused without connecting. Every resolver here is fake and every connection
attempt fails the test; the one real connection goes to 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import urllib3.util.connection
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.endpoints import EndpointPolicy, address_refusal, check_endpoint, parse_endpoint
from storage.errors import EndpointRefused, StorageError, StorageUnavailable
from storage.retry import RetryPolicy
from storage.s3 import S3Store
from tests.storage.hostile_server import HostileServer

STRICT = EndpointPolicy()
LOCAL = EndpointPolicy(allow_loopback=True)
PRIVATE = EndpointPolicy(allow_private=True)

REFUSED_ALWAYS = [
    "fec0::1",  # deprecated site-local, still routed inside some networks
    "192.0.0.8",  # IETF protocol assignments
    "192.88.99.1",  # 6to4 relay anycast
    "3fff::1",  # documentation (RFC 9637)
    "198.18.0.1",  # benchmarking
    "169.254.169.254",  # AWS/GCP/Azure metadata
    "169.254.0.1",
    "fd00:ec2::254",  # AWS IPv6 metadata
    "100.100.100.200",  # Alibaba metadata, inside 100.64/10
    "fe80::1",
    "fe80::1%eth0",
    "0.0.0.0",
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address
    "224.0.0.1",
    "ff02::1",
    "::",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
]
LOOPBACK = ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "2002:7f00:1::1"]
PRIVATE_ADDRESSES = ["10.0.0.1", "172.16.5.4", "172.31.255.255", "192.168.1.1", "100.64.0.1", "fc00::1",
                     "fd12:3456::1", "::ffff:10.1.2.3"]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


def resolver(*addresses: str):
    def resolve(host, port, **_kwargs):
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses]

    return resolve


@pytest.fixture(autouse=True)
def no_connections(monkeypatch):
    """Any connection attempt through the socket module fails the test."""

    def refuse(*args, **kwargs):
        pytest.fail(f"a connection was attempted: {args!r}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr("urllib3.util.connection.create_connection", refuse)


@pytest.mark.parametrize("address", REFUSED_ALWAYS)
def test_link_local_metadata_and_reserved_are_refused_under_every_policy(address):
    for policy in (STRICT, LOCAL, PRIVATE, EndpointPolicy(allow_loopback=True, allow_private=True)):
        assert address_refusal(address, policy) is not None, (address, policy)
        with pytest.raises(EndpointRefused):
            check_endpoint("https://s3.peer.example", policy, resolver(address))


@pytest.mark.parametrize("address", LOOPBACK)
def test_loopback_only_where_the_policy_allows_it(address):
    assert address_refusal(address, STRICT) is not None
    assert address_refusal(address, PRIVATE) is not None
    assert address_refusal(address, LOCAL) is None


@pytest.mark.parametrize("address", PRIVATE_ADDRESSES)
def test_private_only_where_the_policy_allows_it(address):
    assert address_refusal(address, STRICT) is not None
    assert address_refusal(address, LOCAL) is not None  # loopback allowed, private still not
    assert address_refusal(address, PRIVATE) is None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert address_refusal(address, STRICT) is None
    endpoint, addresses = check_endpoint("https://s3.peer.example:8443", STRICT, resolver(address))
    assert (endpoint.host, endpoint.port, addresses) == ("s3.peer.example", 8443, (address,))


def test_one_forbidden_address_among_public_ones_refuses_the_endpoint():
    with pytest.raises(EndpointRefused, match="169.254.169.254"):
        check_endpoint("http://s3.peer.example", STRICT, resolver("8.8.8.8", "169.254.169.254"))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://s3.peer.example",
        "file:///etc/passwd",
        "http://user:pw@s3.peer.example",
        "http://s3.peer.example:0",
        "http://s3.peer.example:65536",
        "http://s3.peer.example:99999999",
        "http://s3.peer.example:-1",
        "http://s3.peer.example:port",
        "http://[::1",
        "http://[not-an-ip]:80",
        "http://",
        "http://s3.peer.example/?x=1",
        "http://s3.peer.example/#frag",
        "http://bad host",
        "http://a..b",
        "http://-a.example",
        "http://" + "a" * 64 + ".example",
        "",
    ],
)
def test_malformed_urls_are_refused_before_resolving(url):
    def must_not_resolve(*_args, **_kwargs):
        pytest.fail("resolved a malformed URL")

    with pytest.raises(EndpointRefused):
        check_endpoint(url, STRICT, must_not_resolve)


def test_unresolvable_host_is_unavailable_not_refused():
    def nxdomain(*_args, **_kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(StorageUnavailable):
        check_endpoint("https://nowhere.example", STRICT, nxdomain)
    with pytest.raises(StorageUnavailable):
        check_endpoint("https://nowhere.example", STRICT, resolver())


def test_host_header_matches_what_botocore_signs():
    assert parse_endpoint("https://S3.Peer.Example").host_header == "s3.peer.example"
    assert parse_endpoint("http://s3.peer.example:80/").host_header == "s3.peer.example"
    assert parse_endpoint("http://s3.peer.example:9000").host_header == "s3.peer.example:9000"
    assert parse_endpoint("http://[2606:4700::1]:9000").host_header == "[2606:4700::1]:9000"


@pytest.mark.parametrize("address", ["169.254.169.254", "10.0.0.5", "127.0.0.1", "fd00:ec2::254"])
def test_a_peer_store_is_refused_at_creation_without_connecting(address):
    with pytest.raises(EndpointRefused):
        S3Store("http://s3.peer.example", "bkt", "AKID", "secret", policy=STRICT, resolve=resolver(address))


def test_a_dns_answer_that_changes_is_refused_before_the_request(monkeypatch):
    answers = iter([("8.8.8.8",), ("169.254.169.254",)])  # checked at creation, then rebound
    store = S3Store("http://s3.peer.example", "bkt", "AKID", "secret", region="us-east-1", policy=STRICT,
                    resolve=lambda host, port, **_kw: resolver(*next(answers))(host, port),
                    retry=RetryPolicy(attempts=1))
    with pytest.raises(EndpointRefused, match="169.254.169.254"):
        store.head("k", deadline=time.monotonic() + 5)


@given(st.text(max_size=200) | st.from_regex(r"\A(https?|ftp)://[^/]{0,40}(/.{0,20})?\Z"))
@settings(max_examples=300, deadline=None)
def test_any_url_is_allowed_or_refused_with_a_typed_error(url):
    try:
        check_endpoint(url, STRICT, resolver("8.8.8.8"))
    except (EndpointRefused, StorageUnavailable):
        pass


@given(st.ip_addresses() | st.text(max_size=60))
@settings(max_examples=300, deadline=None)
def test_any_address_gets_a_verdict(address):
    for policy in (STRICT, LOCAL, PRIVATE):
        verdict = address_refusal(str(address), policy)
        assert verdict is None or isinstance(verdict, str)


def test_loopback_is_reached_only_through_the_checked_address(monkeypatch):
    monkeypatch.undo()  # this one test connects, to 127.0.0.1 only
    seen: list[tuple] = []
    real = urllib3.util.connection.create_connection

    def loopback_only(address, *args, **kwargs):
        assert address[0] == "127.0.0.1", address
        seen.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr("urllib3.util.connection.create_connection", loopback_only)
    with HostileServer("ok") as server:
        port = server.server_address[1]
        store = S3Store(f"http://s3.peer.example:{port}", "bkt", "AKID", "secret", region="us-east-1",
                        policy=LOCAL, resolve=resolver("127.0.0.1"))
        assert store.get("run/k", 10, deadline=time.monotonic() + 5) == b"0123456789"
    assert seen and all(a[0] == "127.0.0.1" for a in seen)
    assert {host for _m, _p, host in server.seen} == {f"s3.peer.example:{port}"}  # the signed Host


def test_refusal_is_a_storage_error():
    assert issubclass(EndpointRefused, StorageError)


def test_a_resolver_that_never_answers_costs_only_the_timeout():
    release = threading.Event()

    def stuck(*_args, **_kwargs):
        release.wait(10)
        return []

    start = time.monotonic()
    try:
        with pytest.raises(StorageUnavailable, match="did not resolve"):
            check_endpoint("https://slow.example", STRICT, stuck, timeout=0.3)
    finally:
        release.set()
    assert time.monotonic() - start < 2.0
