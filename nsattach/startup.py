"""The start-up sequence of the run mode: everything between a validated Plan and the
master's event loop, in uWSGI's order (uwsgi-spec §5.2), each phase exactly once.
"""

from __future__ import annotations

from nsattach.config.model import Plan
from nsattach.errors import ConfigError, ConfigProblem
from nsattach.runtime import Runtime


def unsupported(plan: Plan) -> list[ConfigProblem]:
    """Parts of a valid plan that this version cannot run yet: refused, never ignored."""
    problems = []
    if plan.namespace is not None:
        problems.append(ConfigProblem(plan.namespace.origin, "namespace", "the namespace jail is not supported by the run mode yet"))
    for hook in plan.hooks:
        problems.append(ConfigProblem(hook.origin, hook.option, "hooks are not supported by the run mode yet"))
    for legion in plan.legions:
        problems.append(ConfigProblem(legion.origin, "legion", "Legion is not supported by the run mode yet"))
    for d in plan.daemons:
        if d.legion:
            problems.append(ConfigProblem(d.origin, d.option, "legion daemons are not supported by the run mode yet"))
    if plan.master.identity.changes_anything:
        problems.append(ConfigProblem(None, "uid/gid", "dropping the master's privileges is not supported by the run mode yet"))
    if plan.master.unshare:
        problems.append(ConfigProblem(None, "unshare", "unshare is not supported by the run mode yet"))
    return problems


def run(plan: Plan, invocation) -> int:
    problems = unsupported(plan)
    if problems:
        raise ConfigError(problems)
    from nsattach.config import load_plan

    def reload_plan() -> Plan:
        return load_plan(invocation.config_args, invocation.cli_entries, cwd=invocation.cwd)

    return Runtime(plan, reload_plan, check_reload=unsupported).run()
