"""What a candidate configuration would have done differently from the running one."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TextIO

from nodevigil.app.api.times import rfc3339
from nodevigil.app.replay.engine import Happening, ReplayResult


@dataclass(frozen=True, slots=True)
class Difference:
    """The candidate did something the baseline did not (``extra``), or the reverse."""

    change: str  # extra | missing
    happening: Happening

    def as_dict(self) -> dict[str, Any]:
        """The JSON form, times as RFC 3339."""
        h = self.happening
        return {
            "change": self.change,
            "kind": h.kind,
            "subject": h.subject,
            "at": rfc3339(h.at),
            "what": h.what,
            "evidence": _stamped(h.evidence),
        }


def differences(
    candidate: ReplayResult, baseline: ReplayResult, tolerance: float = 1.0
) -> list[Difference]:
    """Happenings of one and not the other: the same kind, subject and facts within
    ``tolerance`` seconds count as the same (matched in time order)."""
    pending: dict[tuple[str, str, str], list[Happening]] = defaultdict(list)
    for h in baseline.happenings:
        pending[(h.kind, h.subject, h.what)].append(h)
    out: list[Difference] = []
    for h in candidate.happenings:
        others = pending[(h.kind, h.subject, h.what)]
        match = next((o for o in others if abs(o.at - h.at) <= tolerance), None)
        if match is None:
            out.append(Difference("extra", h))
        else:
            others.remove(match)
    out += [Difference("missing", h) for hs in pending.values() for h in hs]
    out.sort(key=lambda d: (d.happening.at, d.change, d.happening.kind, d.happening.subject))
    return out


def _stamped(value: Any) -> Any:
    """Evidence with its wall times (``at``, ``first``, ``last``...) as RFC 3339."""
    if isinstance(value, dict):
        return {
            k: rfc3339(v)
            if k in _TIMES and isinstance(v, int | float) and not isinstance(v, bool)
            else _stamped(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_stamped(v) for v in value]
    return value


_TIMES = {"at", "first", "last", "started_at", "opened_at", "resolved_at", "since"}


def totals(result: ReplayResult) -> dict[str, Any]:
    """Counts per kind, SLA minutes per service and credit per currency."""
    kinds: dict[str, int] = defaultdict(int)
    for h in result.happenings:
        kinds[h.kind] += 1
    minutes: dict[str, int] = defaultdict(int)
    for (service, _day), m in result.minutes.items():
        minutes[service] += m
    credit: dict[str, Decimal] = defaultdict(Decimal)
    for row in result.credits:
        credit[row.currency] += row.credit
    return {
        "counts": dict(sorted(kinds.items())),
        "sla_minutes": dict(sorted(minutes.items())),
        "credit": {cur: str(amount) for cur, amount in sorted(credit.items())},
    }


def report(candidate: ReplayResult, baseline: ReplayResult, tolerance: float) -> dict[str, Any]:
    """The whole comparison as JSON-ready data (``--output json`` and the API)."""
    diffs = differences(candidate, baseline, tolerance)
    return {
        "from": rfc3339(candidate.since),
        "to": rfc3339(candidate.until),
        "candidate": totals(candidate),
        "running": totals(baseline),
        "differences": [d.as_dict() for d in diffs],
        "sla": {
            "candidate": _sla(candidate),
            "running": _sla(baseline),
        },
        "replay": {
            "runs": candidate.stats.runs,
            "results": candidate.stats.results,
            "ignored_runs": candidate.stats.ignored_runs,
            "decisions": {"candidate": candidate.decisions, "running": baseline.decisions},
            "cpu_seconds": {
                "candidate": round(sum(candidate.cpu.values()), 3),
                "running": round(sum(baseline.cpu.values()), 3),
            },
        },
    }


def _sla(result: ReplayResult) -> dict[str, Any]:
    return {
        "minutes": [
            {"service": svc, "date": day, "unavailable_minutes": m}
            for (svc, day), m in sorted(result.minutes.items())
        ],
        "credits": [row.as_dict() for row in result.credits],
        "outages": [
            {
                "service": o.service,
                "start": rfc3339(o.start_us / 1e6),
                "end": rfc3339(o.end_us / 1e6),
                "cause": o.cause.value,
            }
            for o in result.outages
        ],
    }


def write_text(data: dict[str, Any], out: TextIO) -> None:
    """The comparison for a person: totals, then each difference with its evidence."""
    out.write(f"replay {data['from']} .. {data['to']}\n")
    cand, run = data["candidate"], data["running"]
    kinds = sorted(set(cand["counts"]) | set(run["counts"]))
    for kind in kinds:
        a, b = cand["counts"].get(kind, 0), run["counts"].get(kind, 0)
        mark = "" if a == b else f"  ({a - b:+d})"
        out.write(f"  {kind:<18} running {b:>6}  candidate {a:>6}{mark}\n")
    for svc in sorted(set(cand["sla_minutes"]) | set(run["sla_minutes"])):
        a, b = cand["sla_minutes"].get(svc, 0), run["sla_minutes"].get(svc, 0)
        out.write(f"  SLA minutes {svc:<8} running {b:>6}  candidate {a:>6}\n")
    for cur in sorted(set(cand["credit"]) | set(run["credit"])):
        out.write(
            f"  credit {cur:<13} running {run['credit'].get(cur, '0'):>6}  "
            f"candidate {cand['credit'].get(cur, '0'):>6}\n"
        )
    outages = {side: data["sla"][side]["outages"] for side in ("running", "candidate")}
    if outages["running"] != outages["candidate"]:
        for side, rows in outages.items():
            for o in rows:
                out.write(f"  outage ({side}): {o['service']} {o['start']} .. {o['end']}")
                out.write(f" ({o['cause']})\n")
    diffs = data["differences"]
    if not diffs:
        out.write("no differences\n")
        return
    out.write(f"{len(diffs)} differences (+ only with the candidate, - only as running):\n")
    for d in diffs:
        sign = "+" if d["change"] == "extra" else "-"
        out.write(f"{sign} {d['at']} {d['kind']} {d['what']}\n")
        for line in _evidence_lines(d["evidence"]):
            out.write(f"    {line}\n")


def _evidence_lines(evidence: dict[str, Any]) -> list[str]:
    lines = []
    if "why" in evidence:
        lines.append(f"why: {evidence['why']}")
    verdicts = [evidence["verdict"]] if evidence.get("verdict") else []
    verdicts += [v for v in (evidence.get("nodes") or {}).values() if v]
    for v in verdicts:
        lines.append(f"{v['node']} {v['was']}->{v['verdict']} at {v['at']}: {v['reason']}")
        for r in v["results"]:
            lines.append(
                f"  {r['probe']}@{r['vantage']}: {r['count']} x {r['outcome']} "
                f"{r['first']} .. {r['last']} ({r['detail']})"
            )
    if "summary" in evidence:
        lines.append(f"incident {evidence['incident']}: {evidence['summary']}")
    return lines
