"""`luna`: the command line. Imports stay inside commands so `luna --help` starts instantly.

A user's mistake or a store's state ends in one line on stderr and a non-zero exit (the error kind's
code, see luna_core.errors), never in a traceback; `-v` adds debug logging."""

from __future__ import annotations

import logging
import sys

from luna_cli.parser import build_parser, normalize_argv


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(normalize_argv(sys.argv[1:] if argv is None else list(argv)))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from luna_core.errors import LunaError

    try:
        return args.func(args)
    except LunaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; committed work is kept and a rerun continues from it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
