"""`luna`: the command line. Imports stay inside commands so `luna --help` starts instantly.

A user's mistake or a store's state ends in one line on stderr and a non-zero exit (the error kind's
code, see luna_core.errors), never in a traceback; `-v` adds debug logging."""

from __future__ import annotations

import errno
import logging
import sys

from luna_cli.parser import build_parser, normalize_argv
from luna_core.errors import LunaError

_PLAIN_OS_ERRORS = {
    errno.ENOSPC: "free some space, then run the same command again: committed work is kept",
    errno.EDQUOT: "free some space, then run the same command again: committed work is kept",
    errno.EACCES: "give Luna's user access to it, or choose another --home",
    errno.EROFS: "the file system is read-only: choose another --home",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(normalize_argv(sys.argv[1:] if argv is None else list(argv)))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    try:
        return args.func(args)
    except LunaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    # only the machine's own refusals are turned into one line
    except Exception as exc:  # noqa: BLE001
        code = (
            exc.errno
            if isinstance(exc, OSError)
            else errno.ENOSPC
            if "No space left on device" in str(exc)
            else None
        )
        if code not in _PLAIN_OS_ERRORS:
            raise
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        reason = (
            exc.strerror
            if isinstance(exc, OSError) and exc.strerror
            else str(exc).splitlines()[0][:200]
        )
        print(f"error: {reason}{where}: {_PLAIN_OS_ERRORS[code]}", file=sys.stderr)
        return 6
    except KeyboardInterrupt:
        print("interrupted; committed work is kept and a rerun continues from it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
