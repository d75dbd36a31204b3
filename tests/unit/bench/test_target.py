import pytest

from bench.target import TargetError, is_loopback, label_of, listening_inodes, loopback_url, ws_url


def test_loopback_addresses_are_accepted() -> None:
    assert loopback_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert loopback_url("http://127.9.9.9:1") == "http://127.9.9.9:1"
    assert loopback_url("http://[::1]:8080") == "http://[::1]:8080"


@pytest.mark.parametrize("url", ["http://10.0.0.1:8080", "http://192.168.1.5", "http://[2001:db8::1]:80"])
def test_other_addresses_are_refused(url: str) -> None:
    with pytest.raises(TargetError, match="loopback"):
        loopback_url(url)


def test_a_name_is_refused_without_resolution() -> None:
    with pytest.raises(TargetError, match="loopback"):
        loopback_url("http://example.org", resolve=False)


def test_only_http_urls_are_targets() -> None:
    with pytest.raises(TargetError, match="http"):
        loopback_url("ftp://127.0.0.1/")


def test_is_loopback_rejects_names_and_garbage() -> None:
    assert is_loopback("127.0.0.1")
    assert not is_loopback("localhost")
    assert not is_loopback("0.0.0.0")


def test_websocket_url_sits_beside_the_http_base() -> None:
    assert ws_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/v1/ws"
    assert ws_url("https://127.0.0.1:8443") == "wss://127.0.0.1:8443/v1/ws"


def test_label_is_safe_in_a_file_name() -> None:
    assert label_of("http://127.0.0.1:18090") == "127.0.0.1-18090"
    assert label_of("http://[::1]:8080") == "-1-8080"


def test_listening_sockets_of_a_port_are_found_in_the_proc_table() -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:46AA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5551 1\n"
        "   1: 0100007F:46AA 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 5552 1\n"
        "   2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5553 1\n"
    )
    assert listening_inodes(table, 18090) == {"5551"}
    assert listening_inodes(table, 8080) == {"5553"}
    assert listening_inodes(table, 9999) == set()
