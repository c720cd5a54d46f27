"""The ``llmux`` command: ``llmux serve --config config.yaml [--host H] [--port P]``.

Runs the OpenAI-compatible gateway in this process (the engine serves with the GIL released).
Once bound it prints ``LISTENING <port>``; logs are JSON lines on stderr. SIGTERM or Ctrl-C
stops it gracefully: no new connections, in-flight requests and streams finish first.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from . import _llmux


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmux", description="LLMux: an LLM gateway with a Rust engine.")
    p.add_argument("--version", action="version", version=f"llmux {_llmux.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the OpenAI-compatible gateway")
    serve.add_argument("--config", "-c", required=True, help="the config file (YAML)")
    serve.add_argument("--host", default=None, help="address to listen on (default: config, else 0.0.0.0)")
    serve.add_argument("--port", "-p", type=int, default=None, help="port (default: config, else 4000)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            _llmux.serve(args.config, args.host, args.port)
        except KeyboardInterrupt:
            return 0
        except Exception as e:  # a bad config or an address in use: say why, exit non-zero
            text = str(getattr(e, "message", None) or e)
            if text.startswith("llmux.") and ": " in text:
                text = text.split(": ", 1)[1]  # the exception class is not news to the operator
            print(f"llmux: {text}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
