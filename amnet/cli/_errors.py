"""The one way the CLIs report an error the user can fix: an `AmnetError` becomes click's one line
`Error: <message>` and exit code 1, and so does a full disk (an OSError ENOSPC/EDQUOT that no
writer's `disk_full_guard` caught, amnet.core.diskspace); anything else is a bug and keeps its
traceback."""
from __future__ import annotations

import functools
from typing import Callable

import click

from amnet.core.diskspace import disk_full_cause, disk_full_error
from amnet.core.errors import AmnetError


def amnet_errors(func: Callable | None = None, *,
                 messages: dict[type[AmnetError], str] | None = None) -> Callable:
    """Decorate a command's function (innermost, right above its `def`) so that an AmnetError it
    raises becomes a `click.ClickException`. `messages` maps an error type to the template of its
    line, filled with `error` and the command's parameters, e.g.
    `@amnet_errors(messages={ImageError: "{error} (kept in {out})"})`; the first type the error is
    an instance of wins, any other error's line is its message. A disk-full error raised as a
    bare OSError (or wrapped, as torch.save does) becomes a DiskFullError line first."""
    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            def line(e: AmnetError) -> click.ClickException:
                template = next((t for typ, t in (messages or {}).items() if isinstance(e, typ)),
                                "{error}")
                exc = click.ClickException(template.format(error=e, **kwargs))
                exc.exit_code = getattr(e, "exit_code", 1)  # 130 for RunInterrupted (Ctrl-C)
                return exc
            try:
                return f(*args, **kwargs)
            except AmnetError as e:
                raise line(e) from e
            except Exception as e:
                cause = disk_full_cause(e)
                if cause is None:
                    raise
                raise line(disk_full_error(cause)) from e
        return wrapper
    return decorate if func is None else decorate(func)
