"""Running the actions of one legion event, shared by the UDP and the etcd services.

The actions run one after the other, in configuration order, each only after the previous
one finished (uWSGI's order), without ever blocking the master: ``cmd:``/``exec:`` go to the
host, which calls back with the exit status. ``on_finished(failed)`` is called once at the end
(or at the first failure when ``stop_on_error``).
"""

from __future__ import annotations

from typing import Callable


def run_action_chain(host, legion: str, event: str, actions, env: dict[str, str], *, tag: str,
                     stop_on_error: bool, post: Callable[[Callable[[], None]], None],
                     on_finished: Callable[[bool], None]) -> None:
    phase = event.replace("-", "_")
    failed = False

    def done(index: int, status: int | None) -> None:
        nonlocal failed
        if status != 0:
            failed = True
            host.log(f"[{tag}] ERROR, {phase} hook returned: {-1 if status is None else status}", "error")
            if stop_on_error:
                on_finished(failed)
                return
        start(index + 1)

    def start(index: int) -> None:
        if index == len(actions):
            on_finished(failed)
            return
        action = actions[index]
        host.log(f"[{tag}] (phase: {phase} legion: {legion}) calling {action.action}:{action.argument}")
        if action.action == "log":
            host.log(action.argument)
            post(lambda: done(index, 0))
        elif action.action in ("cmd", "exec"):
            host.run_action(legion, event, action, dict(env), lambda status: post(lambda: done(index, status)))
        else:
            host.log(f'[{tag}] ERROR unable to find legion_action "{action.action}"', "error")
            post(lambda: done(index, -1))

    start(0)
