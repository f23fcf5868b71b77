"""Registers the commands and maps EdgekitError kinds to one line and an exit code.

Each command lives in ``edgekit/cli/<name>.py`` and exposes a click command named
``command``; it is imported only when it is run, so a slow toolchain import never
delays ``edgekit --help`` or an unrelated command.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import traceback

import click

from edgekit import __version__
from edgekit.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, EdgekitError

# command name -> one-line help (shown without importing the module)
COMMANDS: dict[str, str] = {
    "build": "Build a .litertlm bundle (wNa8o8 or fp16) from a preset and a checkpoint.",
    "inspect": "Read a bundle back and check it against its manifest and scheme.",
    "eval": "Measure a bundle's quality against its FP16 baseline.",
    "sweep": "Find which decoder layers tolerate 2-bit MLPs.",
    "devices": "List device profiles and which devices are reachable now.",
    "setup": "Install the runner on a device (Pi / host).",
    "push": "Push a bundle to a device (checksummed, skipped when unchanged).",
    "bench": "Benchmark a bundle against its FP16 baseline on a device and gate it.",
    "compare": "Compare two stored results (candidate vs baseline).",
    "gate": "Apply thresholds to a stored result; the exit code carries the verdict.",
    "report": "Regenerate the Markdown/HTML/JUnit views of a result folder.",
}

DEBUG_ENV = "EDGEKIT_DEBUG"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false", "no")


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"edgekit.cli.{name}")
        cmd = module.command
        if cmd.short_help is None and cmd.help is None:
            cmd.short_help = COMMANDS[name]
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl(list(COMMANDS.items()))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
def cli() -> None:
    """edgekit: build Gemma 4 mobile bundles, bench them on devices against FP16, gate releases.

    Exit codes: 0 ok, 1 gate failed, 2 usage, 3 device/infrastructure,
    4 not comparable / insufficient data, 5 bad config file, 6 bad checkpoint,
    7 build failed, 8 not enough resources, 9 output not writable,
    10 inspection found violations, 130 interrupted. EDGEKIT_DEBUG=1 shows tracebacks.
    """


def report_error(exc: EdgekitError) -> int:
    click.echo(f"error: {exc.message}", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)
    return exc.exit_code


def _terminated(signum, frame):
    # SIGTERM (a CI runner cancelling the job, `timeout`, kill) and SIGHUP (the terminal closed)
    # take the Ctrl-C path: children are stopped, partial traces kept, temporary folders removed
    name = signal.Signals(signum).name
    _received.append(name)
    raise KeyboardInterrupt(name)


_received: list[str] = []  # the termination signals caught in this process (click turns them into Abort)


def _trap_termination() -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, _terminated) for s in (signal.SIGTERM, signal.SIGHUP)}


def main(argv: list[str] | None = None) -> int:
    previous = _trap_termination()
    _received.clear()
    try:
        rv = cli.main(args=argv, prog_name="edgekit", standalone_mode=False)
        code = rv if isinstance(rv, int) else EXIT_OK
    except EdgekitError as exc:
        if debug_enabled():
            traceback.print_exc()
        code = report_error(exc)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        by = f" by {_received[0]}" if _received else ""
        click.echo(f"error: {'aborted' if isinstance(exc, click.exceptions.Abort) and not by else 'interrupted'}{by}",
                   err=True)
        code = EXIT_INTERRUPTED
    except Exception as exc:  # a bug in edgekit or an unexpected toolchain failure
        if debug_enabled():
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(f"error: internal error: {type(exc).__name__}: {first}", err=True)
        click.echo(f"hint: rerun with {DEBUG_ENV}=1 for the traceback and report it", err=True)
        code = EXIT_INTERNAL
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
