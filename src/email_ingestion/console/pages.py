"""The console's pages: overview, DLQ (groups, one letter, plan, act), search, audit trail."""

from __future__ import annotations

from typing import Any

from flask import Flask, abort, render_template, request
from werkzeug.wrappers import Response

from email_ingestion.common.keys import StreamKeys
from email_ingestion.console import audit, dead_letters
from email_ingestion.console.charts import line_chart
from email_ingestion.console.formatting import duration
from email_ingestion.console.guard import Console, admin_required, current, login_required
from email_ingestion.console.overview import overview
from email_ingestion.console.search import KINDS, BadQuery, Searcher, check_query
from email_ingestion.worker.dlq_admin import DlqAdmin

REFRESH_S = 15
ACTIONS = ("replay", "purge")
SCOPES = ("one", "reason", "all")
MAX_VALUE_CHARS = 200


def register(app: Flask, console: Console) -> None:
    target = console.target

    @app.get("/")
    @login_required
    def index() -> str:
        snap = overview(target, console.max_unacked, console.streams)
        flow = snap["flow"]
        charts = [line_chart("Messages handled per minute", list(flow.handled), lambda n: f"{n} msg"),
                  line_chart("APPEND to handler done, mean per minute", list(flow.mean_latency_ms),
                             lambda ms: duration(ms / 1000) if ms >= 1000 else f"{ms} ms")]
        return render_template("overview.html", snap=snap, charts=charts, refresh_s=REFRESH_S)

    @app.get("/dlq")
    @login_required
    def dlq() -> str:
        found = dead_letters.letters(target.client, target.dlq)
        return render_template("dlq.html", groups=dead_letters.by_reason(found), letters=found[-200:][::-1],
                               total=len(found), capped=len(found) >= dead_letters.MAX_READ, dlq=target.dlq)

    @app.get("/dlq/letter/<entry_id>")
    @login_required
    def letter(entry_id: str) -> str:
        found = dead_letters.one(target.client, target.dlq, entry_id)
        if found is None:
            abort(404, "no such dead letter")
        meta, fields = found
        session = current()
        content = fields if session is not None and session.role == "admin" else None
        return render_template("letter.html", letter=meta, content=content)

    @app.get("/dlq/plan")
    @admin_required
    def plan() -> str:
        return render_template("plan.html", plan=_plan(console, upto=None))

    @app.post("/dlq/act")
    @admin_required
    def act() -> str:
        chosen = _plan(console, upto=request.form.get("upto", ""))
        done = dead_letters.execute(DlqAdmin(target.client, target.stream, target.dlq), chosen)
        session = current()
        assert session is not None
        audit.record(target.client, user=session.user, role=session.role, action=f"dlq.{chosen.action}",
                     scope=_scope_text(chosen), count=done, address=request.remote_addr or "?")
        return render_template("done.html", plan=chosen, done=done)

    @app.get("/search")
    @login_required
    def search() -> Response | tuple[str, int] | str:
        return _search(console)

    @app.get("/audit")
    @login_required
    def audit_trail() -> str:
        return render_template("audit.html", records=audit.recent(target.client))


def _plan(console: Console, *, upto: str | None) -> dead_letters.Plan:
    values = request.form if request.method == "POST" else request.args
    action, scope, value = values.get("action", ""), values.get("scope", ""), values.get("value", "")
    if action not in ACTIONS or scope not in SCOPES or len(value) > MAX_VALUE_CHARS:
        abort(400, "action must be replay or purge; scope one, reason or all")
    if scope == "one" and not dead_letters.is_entry_id(value):
        abort(400, "not a DLQ entry id")
    target = console.target
    return dead_letters.plan(target.client, target.dlq, action="replay" if action == "replay" else "purge",
                             scope="one" if scope == "one" else "reason" if scope == "reason" else "all",
                             value=value, upto=upto)


def _scope_text(chosen: dead_letters.Plan) -> str:
    if chosen.scope == "all":
        return f"all up to {chosen.upto}"
    return f"{chosen.scope} {chosen.value} up to {chosen.upto}"


def _search(console: Console) -> tuple[str, int] | str:
    raw, kind = request.args.get("q"), request.args.get("kind", "any")
    context: dict[str, Any] = {"query": (raw or "")[:200], "kind": kind, "kinds": KINDS, "found": None, "error": None}
    if raw is None:
        return render_template("search.html", **context)
    try:
        query, checked = check_query(raw, kind)
    except BadQuery as exc:
        context["error"] = str(exc)
        return render_template("search.html", **context), 400
    target = console.target
    keys = StreamKeys(stream=target.stream, group=target.group, dlq=target.dlq)
    searcher = Searcher(target.client, keys=keys, max_entries=console.settings.search_max_entries)
    context["found"] = searcher.search(query, checked)
    return render_template("search.html", **context)
