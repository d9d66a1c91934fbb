"""The outbound header step on every client's header type: exactly the current lane goes out."""
from __future__ import annotations

import httpx
import pytest
from multidict import CIMultiDict
from requests.structures import CaseInsensitiveDict
from urllib3 import HTTPHeaderDict

from graybaggage import config
from graybaggage._runtime import Runtime
from graybaggage.integrations._client import _authority, set_lane_headers

KINDS = [CaseInsensitiveDict, HTTPHeaderDict, httpx.Headers, CIMultiDict]


@pytest.fixture(params=[False, True], ids=["service", "edge"])
def rt(request):
    return Runtime(config.load_settings({}, edge=request.param))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_lane_overwrites_hand_forwarded_values(kind, rt):
    h = kind({"X-MSE-TAG": "blue", "Baggage": "user=7"})
    set_lane_headers(h, "gray", rt)
    assert h.get("x-mse-tag") == "gray"
    assert h.get("baggage") == "user=7,x-mse-tag=gray"
    assert len([k for k in h.keys() if k.lower() == "x-mse-tag"]) == 1


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_no_lane_edge_strips_copied_tags(kind, rt):
    h = kind({"X-Mse-Tag": "gray", "baggage": "x-mse-tag=gray,user=7"})
    set_lane_headers(h, None, rt)
    if rt.settings.edge:  # a proxying edge must not let a forged tag through
        assert h.get("x-mse-tag") is None and h.get("baggage") == "user=7"
    else:  # inside the mesh, what the app forwards is its own business
        assert h.get("x-mse-tag") == "gray"


@pytest.mark.parametrize("url,expected", [
    ("http://c:20001/x", ("c", 20001)),
    ("https://C.Default.svc/x?y#z", ("c.default.svc", 443)),
    ("http://c", ("c", 80)),
    ("http://user@c/x", None),
    ("http://[::1]:80/", None),
    ("http://c:port/", None),
    ("/relative", None),
])
def test_fast_authority_parse(url, expected):
    assert _authority(url) == expected


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("before,after", [
    ("x-mse-tag=blue", "x-mse-tag=gray"),                     # a forwarded entry for another lane is replaced
    ("my-x-mse-tag=1", "my-x-mse-tag=1,x-mse-tag=gray"),       # a key that merely contains ours is not ours
    ("a=x-mse-tag=blue", "a=x-mse-tag=blue,x-mse-tag=gray"),   # nor is a value that contains it
    ("a=1, X-MSE-TAG=blue ,b=2", "a=1,b=2,x-mse-tag=gray"),
])
def test_baggage_member_is_replaced_exactly(kind, before, after, rt):
    h = kind({"baggage": before})
    set_lane_headers(h, "gray", rt)
    assert h.get("baggage") == after


@pytest.mark.parametrize("before", [
    {}, {"X-MSE-TAG": "blue"}, {"x-mse-tag": "gray"}, {"Baggage": "user=7"}, {"baggage": ""},
    {"baggage": "x-mse-tag=gray"}, {"baggage": b"user=7,x-mse-tag=blue"}, {"x-mse-tag": b"gray", "Accept": "*/*"},
])
@pytest.mark.parametrize("lane", ["gray", None])
@pytest.mark.parametrize("carriers", ["header,baggage", "header", "baggage"])
@pytest.mark.parametrize("edge", [False, True])
def test_requests_fast_paths_give_what_the_mapping_gives(before, lane, carriers, edge):
    """The requests integration reads and writes CaseInsensitiveDict's store directly; same result as the
    general step through the mapping's own methods, names' case included."""
    import requests.adapters

    from graybaggage.integrations import requests as gb_requests

    gb_requests._CID = requests.adapters.CaseInsensitiveDict if gb_requests._known_layout(
        requests.adapters.CaseInsensitiveDict) else None
    assert gb_requests._CID is CaseInsensitiveDict
    rt = Runtime(config.load_settings({"GRAYBAGGAGE_CARRIERS": carriers}, edge=edge))
    fast, slow = CaseInsensitiveDict(before), CaseInsensitiveDict(before)
    gb_requests._lane_headers(fast, lane, rt)
    set_lane_headers(slow, lane, rt)
    assert list(fast.lower_items()) == list(slow.lower_items())
    assert list(fast.keys()) == list(slow.keys())


def test_requests_fast_paths_only_for_the_exact_type_and_layout():
    from graybaggage.integrations import requests as gb_requests

    class Mine(CaseInsensitiveDict):
        pass

    class Flat(CaseInsensitiveDict):  # a layout the fast paths do not know: the store keeps bare values
        def __setitem__(self, key, value):
            self._store[key.lower()] = value

    assert gb_requests._known_layout(CaseInsensitiveDict)
    assert not gb_requests._known_layout(Flat)
    gb_requests._CID = CaseInsensitiveDict
    rt = Runtime(config.load_settings({}))
    h = Mine({"Accept": "*/*"})
    gb_requests._lane_headers(h, "gray", rt)  # the general step, through the mapping's own methods
    assert h["x-mse-tag"] == "gray" and h["baggage"] == "x-mse-tag=gray" and h["accept"] == "*/*"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("carriers", ["header", "baggage"])
@pytest.mark.parametrize("before", [{}, {"Baggage": "user=7"}, {"baggage": "X-Mse-Tag=blue,user=7"}, {"X-MSE-TAG": "blue"}])
def test_one_carrier(kind, carriers, before):
    """GRAYBAGGAGE_CARRIERS: only the chosen carrier is added; one the app sent is corrected, never left stale."""
    rt = Runtime(config.load_settings({"GRAYBAGGAGE_CARRIERS": carriers}))
    h = kind(before)
    set_lane_headers(h, "gray", rt)
    had_header = any(k.lower() == "x-mse-tag" for k in before)
    had_member = "x-mse-tag" in before.get("baggage", "").lower()
    assert h.get("x-mse-tag") == ("gray" if carriers == "header" or had_header else None)
    bag = h.get("baggage") or ""
    if carriers == "baggage" or had_member:
        assert "x-mse-tag=gray" in bag.split(",") and "blue" not in bag
    else:
        assert "x-mse-tag" not in bag.lower()
    assert ("user=7" in bag) == ("user=7" in str(before))
