"""The sub-commands, one click module each; the modules import only click at load time, the rest when run."""

from __future__ import annotations

import importlib

# name -> (module, attribute)
_COMMANDS = {
    "rerank": ("prorank_edge.commands.rerank_cmd", "rerank_command"),
    "eval": ("prorank_edge.commands.eval_cmd", "eval_command"),
    "export": ("prorank_edge.commands.export_cmd", "export_command"),
    "bench": ("prorank_edge.commands.bench_cmd", "bench_command"),
    "train": ("prorank_edge.commands.train_cmd", "train_group"),
    "serve": ("prorank_edge.commands.serve_cmd", "serve_command"),
    "batch": ("prorank_edge.commands.batch_cmd", "batch_command"),
}


def _load() -> dict:
    commands = {}
    for name, (module, attr) in _COMMANDS.items():
        try:
            commands[name] = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a real bug inside a command module must not hide
                raise
    return commands


COMMANDS = _load()
