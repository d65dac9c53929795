"""The dashboard's HTML, rendered on the server from :mod:`chalkd.web.readmodel` rows.

Every value goes through :func:`h` (``html.escape``, quotes included) unless it is :class:`Html`, which
only this module makes from its own markup and already-escaped parts. No page has inline script or
style: the Content-Security-Policy (:data:`SECURITY_HEADERS`) allows only ``/static/`` files.

    page("Functions", Html("<p>...</p>"), nav="functions")     # a whole document, as str
    table(["name", "state"], [[Html(link("/functions/add", "add")), "ready"]])
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from string import Template
from urllib.parse import quote

from chalkd.web import readmodel as rm

# Sent with every dashboard response: scripts and styles only from this origin's /static/, no framing
# (a hidden frame cannot trick a click on "cancel"), no Referer to other sites (the login link's token stays
# here). Not "no-referrer": with it browsers send ``Origin: null`` on a form's POST, which the Origin guard refuses.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

NAV = (("/", "overview", "Overview"), ("/calls", "calls", "Calls"), ("/volumes", "volumes", "Volumes"),
       ("/secrets", "secrets", "Secrets"), ("/sandboxes", "sandboxes", "Sandboxes"),
       ("/groups", "groups", "Scaling groups"), ("/gpus", "gpus", "GPUs"))


class Html(str):
    """Markup that is already safe (made here, from escaped parts): :func:`h` leaves it as it is."""


def h(value: object) -> Html:
    """Escape anything for HTML text or a quoted attribute.

    >>> h('<script>"x"</script>'), h(Html("<b>ok</b>"))
    ('&lt;script&gt;&quot;x&quot;&lt;/script&gt;', '<b>ok</b>')
    """
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def link(href: str, text: object, **attrs: str) -> Html:
    """``<a href=...>`` with both escaped; ``href`` must be one of our own paths (built with :func:`path`)."""
    extra = "".join(f' {k.replace("_", "-")}="{h(v)}"' for k, v in attrs.items())
    return Html(f'<a href="{h(href)}"{extra}>{h(text)}</a>')


def path(*parts: str) -> str:
    """A path of ours with each part percent-encoded: ``path("functions", "a b")`` -> ``/functions/a%20b``."""
    return "/" + "/".join(quote(p, safe="") for p in parts)


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def took(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def badge(state: str) -> Html:
    return Html(f'<span class="state state-{h(state.lower())}">{h(state)}</span>')


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, empty: str = "none", cls: str = "") -> Html:
    """A table; each cell escaped unless :class:`Html`."""
    body = "".join("<tr>" + "".join(f"<td>{h(c)}</td>" for c in r) + "</tr>" for r in rows)
    if not body:
        return Html(f'<p class="empty">{h(empty)}</p>')
    head = "".join(f"<th>{h(c)}</th>" for c in headers)
    return Html(f'<table class="{h(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def form_button(action: str, label: str, csrf: str, *, confirm: str = "", name: str = "") -> Html:
    """A POST form with the session's CSRF token (the handler checks it) and one button."""
    data = f' data-confirm="{h(confirm)}"' if confirm else ""
    test_id = f' id="{h(name)}"' if name else ""
    return Html(f'<form method="post" action="{h(action)}" class="action"{data}>'
                f'<input type="hidden" name="csrf" value="{h(csrf)}">'
                f'<button type="submit"{test_id}>{h(label)}</button></form>')


_LAYOUT = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>$title - chalkd</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/dashboard.css"><script src="/static/dashboard.js" defer></script></head>
<body><header><span class="brand">chalkd</span><nav>$nav</nav>$logout</header>
<main>$flash<h1>$title</h1>
$body</main></body></html>
""")


def page(title: str, body: Html, *, nav: str = "", csrf: str = "", flash: str = "") -> str:
    """A whole document. ``csrf``: the session's token (a logout button); ``flash``: a one-time notice."""
    items = "".join(f'<a href="{h(href)}"{" class=current" if key == nav else ""}>{h(text)}</a>'
                    for href, key, text in NAV)
    logout = form_button("/logout", "Log out", csrf) if csrf else ""
    notice = f'<p class="flash" id="flash">{h(flash)}</p>' if flash else ""
    return _LAYOUT.substitute(title=h(title), nav=items, logout=logout, flash=notice, body=body)


def login_help(message: str, status_line: str = "") -> str:
    """The page a browser without a session gets: how to log in (the token itself is never shown)."""
    body = Html(f"<p>{h(message)}</p>"
                "<p>Run <code>chalkd dashboard</code> on the daemon's machine: it prints and opens a login link "
                "(<code>/login?token=...</code>) that starts a session in this browser. The link holds the "
                "daemon's token; the cookie it sets holds a random session id, not the token.</p>"
                + (f"<p class=\"muted\">{h(status_line)}</p>" if status_line else ""))
    return page("Log in to chalkd", body)


# -- the pages ------------------------------------------------------------------------------


def _functions_table(fns: Sequence[rm.FunctionRow]) -> Html:
    rows = []
    for f in fns:
        state = "failed" if f.failed else ("ready" if f.ready else ("waiting" if f.waiting else "idle"))
        rows.append([
            link(path("functions", f.name), f.name), f"v{f.version}" + ("" if f.latest else " (old)"),
            badge(state),
            Html(f'<span data-live="fn:{h(f.id)}:replicas">{f.ready}/{f.replicas}</span>'),
            f"{f.desired} ({f.min_replicas}..{f.max_replicas})",
            Html(f'<span data-live="fn:{h(f.id)}:queued">{f.queued}</span>'),
            Html(f'<span data-live="fn:{h(f.id)}:running">{f.running}</span>'),
            f.resources, f.failed or f.waiting or f.decision,
        ])
    return table(["function", "version", "state", "ready/replicas", "desired (min..max)", "queued", "running",
                  "resources", "status"], rows, empty="no functions deployed yet", cls="functions")


def _calls_table(calls: Sequence[rm.CallRow]) -> Html:
    rows = []
    for c in calls:
        dur = took(c.finished_at - c.created_at) if c.finished_at else ""
        rows.append([link(path("calls", c.id), c.id), link(path("functions", c.function), c.function)
                     if c.function else "", badge(c.state), c.attempt, when(c.created_at), dur,
                     Html(f'<span class="error">{h(c.error[:200])}</span>') if c.error else ""])
    return table(["call", "function", "state", "attempt", "created", "took", "error"], rows,
                 empty="no calls yet", cls="calls")


def overview(o: rm.Overview, fns: Sequence[rm.FunctionRow], calls: Sequence[rm.CallRow], *, csrf: str,
             flash: str = "") -> str:
    stats = Html(
        '<dl class="stats" data-sse-live="/live">'
        f"<div><dt>version</dt><dd>{h(o.version)}</dd></div><div><dt>runtime</dt><dd>{h(o.runtime)}</dd></div>"
        f'<div><dt>up</dt><dd data-live="uptime">{h(took(o.uptime_s))}</dd></div>'
        f'<div><dt>functions</dt><dd data-live="functions">{o.functions}</dd></div>'
        f'<div><dt>replicas</dt><dd data-live="replicas">{o.replicas}</dd></div>'
        f'<div><dt>queued</dt><dd data-live="queued">{o.queued}</dd></div>'
        f'<div><dt>running</dt><dd data-live="running">{o.running}</dd></div>'
        f'<div><dt>submitted</dt><dd data-live="submitted">{o.submitted}</dd></div></dl>')
    body = Html(f"{stats}<h2>Functions</h2>{_functions_table(fns)}<h2>Recent calls</h2>{_calls_table(calls)}"
                f'<p>{link("/calls", "all recent calls")}</p>')
    return page("Overview", body, nav="overview", csrf=csrf, flash=flash)


def function(name: str, versions: Sequence[rm.FunctionRow], calls: Sequence[rm.CallRow], *, csrf: str) -> str:
    parts = [_functions_table(versions)]
    for f in versions:
        on_nodes = any(r.node for r in f.replica_rows)  # a swarm: which node each one runs on
        reps = [[r.id, badge(r.state), took(r.age_s), *([r.node] if on_nodes else []), ", ".join(r.gpus),
                 link(path("replicas", r.id, "log"), "log") if r.has_log else ""] for r in f.replica_rows]
        parts.append(Html(f"<h2>v{f.version} replicas</h2>"))
        parts.append(table(["replica", "state", "age", *(["node"] if on_nodes else []), "GPUs", "output"], reps,
                           empty="no replicas now"))
    parts.append(Html(f"<h2>Recent calls of {h(name)}</h2>"))
    parts.append(_calls_table(calls))
    return page(f"Function {name}", Html("".join(parts)), nav="overview", csrf=csrf)


def calls(rows: Sequence[rm.CallRow], *, csrf: str) -> str:
    return page("Recent calls", _calls_table(rows), nav="calls", csrf=csrf)


def log_block(replica_id: str, lines: Sequence[str], offset: int, *, live: bool = True) -> Html:
    """A replica's log tail, labelled as the replica's whole output; the script appends new lines (SSE)."""
    stream = f' data-sse-log="{h(path("replicas", replica_id, "log", "stream"))}?from={offset}"' if live else ""
    text = "\n".join(lines)
    return Html(f'<div class="log"><div class="log-label">replica {h(replica_id)}: its whole output '
                f'(stdout and stderr), last {len(lines)} lines{", live" if live else ""}</div>'
                f'<pre class="log-lines" id="log-{h(replica_id)}"{stream}>{h(text)}</pre></div>')


def call_detail(d: rm.CallDetail, logs: Sequence[tuple[str, list[str], int]], own_lines: Sequence[str] = (), *,
                csrf: str, flash: str = "") -> str:
    c = d.row
    fn_link = link(path("functions", c.function), f"{c.function} v{d.function_version}")
    replica = link(path("replicas", d.replica_id, "log"), d.replica_id) if d.replica_id else "not recorded"
    facts = [("call", c.id), ("function", fn_link),
             ("state", badge(c.state)), ("attempt", c.attempt), ("failed attempts", d.failures),
             ("created", when(c.created_at)), ("finished", when(c.finished_at)),
             ("took", took(c.finished_at - c.created_at) if c.finished_at else ""),
             ("running for", took(d.running_for_s)), ("replica", replica),
             ("stream chunks", d.chunks if d.chunks else ""), ("batch rows", d.batch_rows or ""),
             ("parent call", Html(link(path("calls", c.parent_id), c.parent_id)) if c.parent_id else "")]
    dl = "".join(f"<div><dt>{h(k)}</dt><dd>{h(v)}</dd></div>" for k, v in facts if v not in ("", None))
    parts = [Html(f'<dl class="facts">{dl}</dl>')]
    if c.open and csrf:
        parts.append(form_button(path("calls", c.id, "cancel"), "Cancel this call", csrf,
                                 confirm=f"Cancel call {c.id}?", name="cancel-call"))
    parts.append(Html(f"<h2>Arguments (shapes, not values; {h(size(d.args_bytes))} in all)</h2>"))
    if d.args_note:
        parts.append(Html(f'<p class="muted">{h(d.args_note)}</p>'))
    parts.append(table(["argument", "type", "rows", "bytes", "length per row"],
                       [[a.name, Html(f"<code>{h(a.type)}</code>"), a.rows, a.nbytes,
                         ", ".join(map(str, a.lengths))] for a in d.args], empty="no arguments"))
    if d.error_type:
        parts.append(Html("<h2>Error</h2>"))
        parts.append(Html(f'<p class="error"><code>{h(d.error_type)}</code>'
                          f'{" (" + h(d.error_code) + ")" if d.error_code else ""}: {h(d.error_message)}</p>'))
        if d.traceback:
            parts.append(Html(f'<pre class="traceback">{h(d.traceback)}</pre>'))
    parts.append(Html("<h2>This call's output</h2>"))
    parts.append(Html('<p class="muted">What the handler wrote while it ran this call (print, stderr, logging); '
                      'output below Python (a subprocess) is in its replica\'s output below.</p>'))
    if own_lines:
        parts.append(Html(f'<pre class="call-lines">{h(chr(10).join(own_lines))}</pre>'))
    else:
        parts.append(Html('<p class="muted">none</p>'))
    parts.append(Html("<h2>Replica output</h2>"))
    parts.append(Html(f'<p class="muted">The whole output of the replica: {h(d.log_note)}.</p>'))
    for replica_id, lines, offset in logs:
        parts.append(log_block(replica_id, lines, offset, live=c.open))
    return page(f"Call {c.id}", Html("".join(parts)), nav="calls", csrf=csrf, flash=flash)


def replica_log(replica_id: str, lines: Sequence[str], offset: int, *, csrf: str) -> str:
    return page(f"Replica {replica_id}", log_block(replica_id, lines, offset), nav="overview", csrf=csrf)


def volumes(rows: Sequence[rm.VolumeRow], *, csrf: str) -> str:
    t = table(["volume", "size", "files", "updated"],
              [[v.name, size(v.size_bytes), v.file_count, when(v.updated_at)] for v in rows], empty="no volumes")
    return page("Volumes", t, nav="volumes", csrf=csrf)


def secrets(rows: Sequence[rm.SecretRow], integrations: Sequence[tuple[str, tuple[str, ...], float]], *,
            csrf: str) -> str:
    t = table(["secret (names only: values never leave the daemon's store)", "updated"],
              [[s.name, when(s.updated_at)] for s in rows], empty="no secrets")
    i = table(["integration", "keys (names only)", "updated"],
              [[name, ", ".join(keys), when(updated)] for name, keys, updated in integrations],
              empty="no integrations")
    return page("Secrets", Html(f"{t}<h2>Integrations</h2>{i}"), nav="secrets", csrf=csrf)


def sandboxes(rows: Sequence[rm.SandboxRow] | None, runtime: str, *, csrf: str, flash: str = "") -> str:
    if rows is None:
        body = Html(f'<p class="empty" id="no-sandboxes">This daemon runs the {h(runtime)} runtime, which has no '
                    "sandboxes (start it with <code>--runtime docker</code>): nothing to list or terminate.</p>")
        return page("Sandboxes", body, nav="sandboxes", csrf=csrf, flash=flash)
    t = table(["sandbox", "name", "status", "message", "created", "expires", "resources", ""],
              [[s.id, s.name, badge(s.status), s.message, when(s.created_at), when(s.expires_at), s.resources,
                form_button(path("sandboxes", s.id, "terminate"), "Terminate", csrf,
                            confirm=f"Terminate sandbox {s.id}?", name=f"terminate-{s.id}")
                if s.live and csrf else ""] for s in rows], empty="no sandboxes")
    return page("Sandboxes", t, nav="sandboxes", csrf=csrf, flash=flash)


def groups(rows: Sequence[rm.GroupRow] | None, runtime: str, *, csrf: str) -> str:
    if rows is None:
        body = Html(f'<p class="empty">This daemon runs the {h(runtime)} runtime: scaling groups need '
                    "<code>--runtime docker</code> or <code>--runtime swarm</code>.</p>")
        return page("Scaling groups", body, nav="groups", csrf=csrf)
    t = table(["group", "id", "status", "message", "URL", "revision", "desired", "replicas"],
              [[g.name, g.id, badge(g.status), g.message, g.url, g.revision, g.desired,
                ", ".join(f"{rid} ({state})" for rid, state in g.replicas)] for g in rows], empty="no scaling groups")
    return page("Scaling groups", t, nav="groups", csrf=csrf)


def gpus(rows: Sequence[rm.GpuRow], *, csrf: str) -> str:
    t = table(["index", "name", "memory", "uuid", "held by"],
              [[g.index, g.name, g.memory, g.uuid, g.owner or "free"] for g in rows],
              empty="no GPUs seen (NVML finds none, or the process runtime without CHALKD_FAKE_GPUS)")
    return page("GPUs", t, nav="gpus", csrf=csrf)


def not_found(what: str, *, csrf: str) -> str:
    return page("Not found", Html(f'<p class="empty">{h(what)}</p>'), csrf=csrf)
