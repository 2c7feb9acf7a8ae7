"""The server subprocess: llama-cpp-python's OpenAI-compatible server, loaded AMX-safe.

``python -m extract.providers.llama_server --extra-buffers 0|1 -- <llama_cpp.server args>``.
llama-cpp-python's server has no option for ``use_extra_bufts``, so this entry point runs it
with its model loads inside ``llama_load_params`` and says so on stderr, where the server's
log shows it. ``server.start_server`` is the only caller. It imports no tier.
"""

from __future__ import annotations

import sys

from extract.providers.local_model import llama_load_params


def main(argv: list[str]) -> None:
    extra = False
    if argv[:1] == ["--extra-buffers"]:
        if argv[1:2] not in (["0"], ["1"]):
            raise SystemExit("--extra-buffers takes 0 or 1")
        extra = argv[1] == "1"
        argv = argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    from llama_cpp.server.__main__ import main as llama_server_main

    print(f"extract: llama.cpp extra buffer types {'on' if extra else 'off'} (use_extra_bufts={extra})",
          file=sys.stderr, flush=True)
    sys.argv = ["llama_cpp.server", *argv]
    with llama_load_params(extra_buffers=extra):
        llama_server_main()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main(sys.argv[1:])
