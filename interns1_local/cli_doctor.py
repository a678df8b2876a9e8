"""``interns1 doctor``: the install, the machine and the runtime's choices on one screen (or as JSON)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from .cli import app, err, handle_errors, out
from .cli_run import CpuBuffersOpt, _resolve_model
from .fsutil import format_bytes


def _show(value: Any, key: str = "") -> str:
    if isinstance(value, int) and not isinstance(value, bool) and key.endswith("bytes"):
        return format_bytes(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_show(v, key if key.endswith('bytes') else k)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return "\n".join(_show(v, key) for v in value) if any(isinstance(v, dict) for v in value) else \
            ", ".join(map(str, value)) or "none"
    return str(value)


@app.command()
@handle_errors
def doctor(
    model: Annotated[str | None, typer.Argument(help="Also show what loading this model would choose.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
    cpu_buffers: CpuBuffersOpt = None,
    rpc: Annotated[str | None, typer.Option(help="Also probe these RPC workers (HOST:PORT[,HOST:PORT...]).")] = None,
) -> None:
    """What this install and machine are (versions, backends, CPU features, devices, memory, disk, cached models) and
    what the runtime will choose here; exit code 1 when llama.cpp cannot be loaded."""
    from .doctor import diagnose

    path = _resolve_model(model, None)[0] if model else None
    endpoints = None
    if rpc:
        from .runtime.rpc import parse_endpoints  # loads llama.cpp: only when asked, so a broken install is reported

        endpoints = parse_endpoints(rpc)
    report = diagnose(path, cpu_buffers, endpoints)
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
    else:
        for section, fields in report.sections.items():
            table = Table(title=section, show_header=False, title_justify="left", min_width=60)
            for key, value in fields.items():
                table.add_row(key, _show(value, key))
            out.print(table)
        for problem in report.problems:
            err.print(f"[bold red]broken install:[/] {problem}", highlight=False, soft_wrap=True)
    unreachable = [e for e, w in report.sections.get("rpc_workers", {}).items() if not w.get("reachable", True)]
    if not report.ok or unreachable:
        raise typer.Exit(1)
