"""The ``federation_pull`` job kind: a pull from a peer (samples, models, taxonomy additions) run by the
job machinery, so that a scheduled pull (:mod:`hazardlens.federation.schedule`) runs on the server's
embedded runner or on a Celery worker alike, with its summary as the job's result (``GET /v1/jobs``).
Importing this module registers the kind (the server, ``hazardlens worker`` and ``hazardlens jobs`` do).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from hazardlens.auth import Principal, require_system
from hazardlens.context import Context
from hazardlens.contracts.jobs import FederationPullJobParams
from hazardlens.errors import HazardError
from hazardlens.federation.peers import get_peer
from hazardlens.jobs import Progress, register
from hazardlens.orm import Job

log = logging.getLogger("hazardlens.federation")

KIND = "federation_pull"


def pull(ctx: Context, params: FederationPullJobParams, progress: Progress | None = None) -> dict[str, Any]:
    """Pull each part in turn; one part failing (a peer that did not grant ``models``) does not keep
    the others from running, but fails the job afterwards with every part's error, so that a refused
    or unreachable peer is seen (the parts that did run are in the job's log)."""
    from hazardlens.federation import additions, sync

    result: dict[str, Any] = {"peer": params.peer, "full": params.full, "scheduled": params.scheduled}
    errors: list[HazardError] = []
    say = progress or (lambda _fraction, _message: None)
    for index, part in enumerate(params.what):
        say(index / len(params.what), f"pulling {part} from {params.peer}")
        try:
            if part == "samples":
                result[part] = sync.pull_samples(ctx, params.peer, params.page_size, full=params.full)
            elif part == "models":
                result[part] = sync.pull_models(ctx, params.peer)
            else:
                result[part] = additions.pull_taxonomy(ctx, params.peer)
        except HazardError as exc:
            log.warning("pull of %s from %s failed: %s: %s", part, params.peer, exc.code, exc.message)
            say((index + 1) / len(params.what), f"{part} from {params.peer} failed: {exc.code}")
            errors.append(HazardError(f"{part}: {exc.message}", code=exc.code, status=exc.status))
            continue
        summary = json.dumps(result[part], ensure_ascii=False)[:400]
        say((index + 1) / len(params.what), f"pulled {part} from {params.peer}: {summary}")
    if errors:
        raise HazardError("; ".join(e.message for e in errors), code=errors[0].code, status=errors[0].status)
    return result


def _check(ctx: Context, params: Any, principal: Principal) -> None:
    require_system(principal, "pulling from a federation peer", ctx.settings.system_org)
    with ctx.db.read_session() as s:
        get_peer(s, params.peer)


def _handler(ctx: Context, job: Job, principal: Principal, progress: Progress) -> dict[str, Any]:
    params = FederationPullJobParams.model_validate(job.params or {})
    result = pull(ctx, params, progress)
    progress(1.0, f"pulled {', '.join(params.what)} from {params.peer}")
    return result


register(KIND, permission="keys:manage", handler=_handler, check=_check, loggers=("httpx",))
