"""Session histories: the events of every run of a session, rendered when one is read.

Nothing here is stored. A run's events come from an RNG seeded by the simulator's seed, the
project, the session and the run's place in the history; its stop event is what the run left
(the ``job_metadata`` for the newest run, ``_Project.prior`` for the earlier ones). So a history
reads the same every time it is read, and a million sessions cost nothing until one is read.

A run is a ``user_input``, then some of ``thinking_delta``/``thinking``, ``tool_call`` and
``tool_result`` (a page read carries an ``image_attachment``), ``text_delta``/``text``, and its
``stop`` event, as the SDK's ``ChatRetrieveResponse`` models them. A few runs asked for an
index they could not query: their stop event names it in ``skipped_index_ids``.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from .model import _TITLES, _Project, _stop_of, _unpack_stops

# The share of runs that asked for an index they could not query.
SKIP_SHARE = 0.04
# The ways ``FaultConfig.malformed_history_share`` breaks one stop event of a history.
MALFORMED_STOP_KINDS = (
    "missing_usage",
    "usage_not_object",
    "is_error_not_bool",
    "string_count",
    "negative_count",
)

_FOLLOW_UPS = (
    "Can you show the sources for that?",
    "And for the EU region?",
    "Make it shorter, three bullet points.",
    "What about last year?",
    "Which document says so?",
    "Try again with the updated files.",
)
_THOUGHTS = (
    "The user asks about a document in the bound index, so I should search it first.",
    "I need the exact figures, which means reading the page rather than the summary.",
    "Two sources disagree; the newer one should win unless it is a draft.",
    "This looks answerable from the earlier results without another search.",
)
_FILES = ("q3-report.pdf", "handbook.pdf", "msa-2025.pdf", "pricing-2025.xlsx", "audit-2024.pdf")
_SNIPPETS = (
    "Revenue grew 12% quarter over quarter, led by the enterprise segment.",
    "Refunds for enterprise plans are prorated to the remaining term.",
    "The EU region commits to 99.9% monthly availability.",
    "Either party may terminate with 90 days written notice.",
    "Open risks: vendor concentration, key-person dependency, backup testing.",
    "Latency complaints fell after the March release.",
)
_ANSWERS = (
    "According to the report, revenue grew 12% quarter over quarter, mostly from enterprise.",
    "Enterprise refunds are prorated: you get back the unused part of the term.",
    "The SLA for the EU region is 99.9% monthly availability, with service credits below it.",
    "Clause 7.2 lets either party terminate with 90 days of written notice.",
    "The audit lists three open risks: vendor concentration, one key person, untested backups.",
    "I could not find that in the indexed documents; the closest match is the 2024 audit.",
)


def _run_rng(seed: int, project_id: str, session_id: str, run: int) -> random.Random:
    return random.Random(f"history:{seed}:{project_id}:{session_id}:{run}")


def _stops(project: _Project, item: dict[str, Any]) -> list[dict[str, Any]]:
    """The stop events of a session's runs, oldest first, without ``skipped_index_ids``."""
    stops = _unpack_stops(project.prior.get(item["session_id"], b""))
    newest = _stop_of(item.get("job_metadata"))
    if newest is not None:
        stops.append(newest)
    return stops


def _history(
    seed: int, project: _Project, item: dict[str, Any], malformed_share: float = 0.0
) -> list[dict[str, Any]]:
    """Every event of a session (a decoded item of ``project``), in order.

    ``malformed_share`` is the share of histories that also carry events of types the SDK does
    not know, and (half of them) one stop event of the wrong shape.
    """
    session_id: str = item["session_id"]
    raw_ids = item.get("index_ids")
    bound = [i for i in raw_ids if isinstance(i, str)] if isinstance(raw_ids, list) else []
    title = item.get("generated_title")
    events: list[dict[str, Any]] = []
    stops = _stops(project, item)
    for run, stop in enumerate(stops):
        rng = _run_rng(seed, project.project_id, session_id, run)
        first = title if run == 0 and isinstance(title, str) and title else None
        events.extend(_run_events(rng, first, stop, bound, project.index_pool))
    if malformed_share:
        _malform_history(
            events, f"{seed}:{project.project_id}:{session_id}:{len(stops)}", malformed_share
        )
    return events


def _served_stops(seed: int, project: _Project, item: dict[str, Any]) -> list[dict[str, Any]]:
    """The stop events of a session's history as the endpoint serves them (faults aside)."""
    return [event for event in _history(seed, project, item) if event.get("type") == "stop"]


def _run_events(
    rng: random.Random,
    question: str | None,
    stop: dict[str, Any],
    bound: list[str],
    pool: tuple[str, ...],
) -> list[dict[str, Any]]:
    """One run: the user's question, the model's work and answer, and ``stop``."""
    rand = rng.random
    if question is None:
        question = rng.choice(_FOLLOW_UPS) if rand() < 0.6 else rng.choice(_TITLES)
    events: list[dict[str, Any]] = [{"type": "user_input", "content": question}]
    skipped = _skipped(rng, bound, pool)
    if rand() < 0.5:
        events.extend(_streamed(rng, "thinking", rng.choice(_THOUGHTS)))
    for index_id in skipped:
        arguments = {"query": question, "index_id": index_id}
        result = {"error": f"Index {index_id} could not be queried"}
        events.extend(_called(_call_id(rng), "search_index", arguments, result))
    for _ in range(rng.randint(0, 3)):
        events.extend(_tool(rng, question, bound))
    if not stop["is_error"] or rand() < 0.4:
        events.extend(_streamed(rng, "text", rng.choice(_ANSWERS)))
    if skipped:
        stop = {**stop, "skipped_index_ids": skipped}
    events.append(stop)
    return events


def _skipped(rng: random.Random, bound: list[str], pool: tuple[str, ...]) -> list[str]:
    """The indexes a run asked for and could not query: mostly none; else some of the bound
    ones, or one of the project's indexes that the session is not bound to."""
    if rng.random() >= SKIP_SHARE:
        return []
    unbound = [index_id for index_id in pool if index_id not in bound]
    if bound and (not unbound or rng.random() < 0.75):
        return rng.sample(bound, 1 + int(rng.random() * len(bound)))
    return [rng.choice(unbound)] if unbound else []


def _call_id(rng: random.Random) -> str:
    return f"call_{rng.getrandbits(64):016x}"


def _called(
    call_id: str,
    name: str,
    arguments: dict[str, Any],
    result: object,
    attachment: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """A tool call and its result."""
    done: dict[str, Any] = {"type": "tool_result", "call_id": call_id, "name": name}
    done["result"] = result
    if attachment is not None:
        done["image_attachment"] = attachment
    call = {"type": "tool_call", "call_id": call_id, "name": name, "arguments": arguments}
    return [call, done]


def _streamed(rng: random.Random, kind: str, content: str) -> list[dict[str, Any]]:
    """``content`` as the model streams it: ``<kind>_delta`` pieces, then the whole ``<kind>``."""
    words = content.split(" ")
    events: list[dict[str, Any]] = []
    at = 0
    while at < len(words):
        take = 1 + int(rng.random() * 4)
        piece = " ".join(words[at : at + take])
        at += take
        events.append(
            {"type": f"{kind}_delta", "content": piece if at >= len(words) else piece + " "}
        )
    events.append({"type": kind, "content": content})
    return events


def _tool(rng: random.Random, question: str, bound: list[str]) -> list[dict[str, Any]]:
    """A tool call and its result: a search of a bound index, or a page read with a screenshot."""
    call = _call_id(rng)
    source_id = f"file-{rng.getrandbits(48):012x}"
    if bound and rng.random() < 0.7:
        arguments: dict[str, Any] = {"query": question, "index_id": rng.choice(bound), "top_k": 5}
        nodes = [
            {
                "text": rng.choice(_SNIPPETS),
                "score": round(0.5 + rng.random() / 2, 3),
                "file_name": rng.choice(_FILES),
                "source_id": source_id,
                "page": 1 + int(rng.random() * 40),
            }
            for _ in range(1 + int(rng.random() * 3))
        ]
        return _called(call, "search_index", arguments, {"nodes": nodes})
    page = 1 + int(rng.random() * 40)
    text = rng.choice(_SNIPPETS)
    result = {"file_name": rng.choice(_FILES), "page": page, "text": text}
    attachment = {"attachment_name": f"page_{page}.png", "source_id": source_id}
    arguments = {"source_id": source_id, "page": page}
    return _called(call, "read_page", arguments, result, attachment)


def _malform_history(events: list[dict[str, Any]], key: str, share: float) -> None:
    """Give ``share`` of histories (chosen by hashing ``key``: the same history, the same
    choice) events of unknown types and, half of them, one stop event of the wrong shape."""
    bits = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    if (bits >> 11) / 2**53 >= share:
        return
    out: list[dict[str, Any]] = []
    for event in events:
        out.append(event)
        if event["type"] == "tool_result":
            out.append({"type": "citation", "call_id": event["call_id"], "text": "a passage"})
        elif event["type"] == "user_input":
            out.append({"type": "progress", "percent": 0})
    events[:] = out or [{"type": "progress", "percent": 100}]
    stops = [event for event in events if event.get("type") == "stop"]
    if not stops or bits & 1:
        return
    stop = stops[(bits >> 1) % len(stops)]
    kind = MALFORMED_STOP_KINDS[(bits >> 5) % len(MALFORMED_STOP_KINDS)]
    usage = dict(stop["usage"])
    if kind == "missing_usage":
        del stop["usage"]
    elif kind == "usage_not_object":
        stop["usage"] = "unavailable"
    elif kind == "is_error_not_bool":
        stop["is_error"] = "false"
    elif kind == "string_count":
        usage["total_input_tokens"] = str(usage.get("total_input_tokens") or 0)
        stop["usage"] = usage
    else:
        count = usage.get("total_output_tokens")
        usage["total_output_tokens"] = -(abs(count) + 1) if type(count) is int else -1
        stop["usage"] = usage
