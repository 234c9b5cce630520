"""match_responses: a client pairs a server's answers with its requests by id, never raising."""

from __future__ import annotations

import logging

from fedkt.generation import Request, Response, match_responses

REQUESTS = [Request(i, f"prompt {i}") for i in ["a", "b", "c", "d", "e", "f", "g"]]


def test_well_formed_answers_in_any_order_are_matched_by_id():
    responses = [Response(r.id, f"text {r.id}") for r in reversed(REQUESTS)]
    good, bad = match_responses(REQUESTS, responses)
    assert good == {r.id: f"text {r.id}" for r in REQUESTS}
    assert bad == []


def test_malformed_answers_are_reported_and_the_good_ones_kept(caplog):
    responses = [
        Response("a", "fine"),
        # "b" has no answer at all
        Response("c", ""),
        Response("d", " \n\t"),
        Response("zz", "an answer to nothing we asked"),
        Response("e", "same"),
        Response("e", "same"),  # a harmless retransmission: kept
        Response("f", "one"),
        Response("f", "two"),  # conflicting: no telling which is right
        Response("g", ""),
        Response("g", "late but usable"),  # an empty copy does not spoil a good one
        Response(None, "no id"),  # type: ignore[arg-type]
        Response("a", None),  # type: ignore[arg-type]
    ]
    with caplog.at_level(logging.WARNING):
        good, bad = match_responses(REQUESTS, responses)
    assert good == {"a": "fine", "e": "same", "g": "late but usable"}
    assert bad == ["b", "c", "d", "f", "zz", "None"]
    for kind in ["missing: ['b']", "empty or not text: ['c', 'd']", "conflicting duplicates"]:
        assert kind in caplog.text
    assert "4 of 7 requests got no usable answer" in caplog.text


def test_no_answers_at_all():
    good, bad = match_responses(REQUESTS[:2], [])
    assert good == {}
    assert bad == ["a", "b"]
