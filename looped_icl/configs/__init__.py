"""The experiment configs, loadable by name from anywhere: ``config_lib.load("default:quick")``.

Each module has ``get_config(arg)`` (and sweeps ``get_sweep(arg)``); its docstring holds the run
command, the expected result and the ``quick`` variant. ``looped-icl train --config=NAME[:ARG]``.
"""
