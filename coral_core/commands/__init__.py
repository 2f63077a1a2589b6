"""The ``coral`` sub-commands of the subsystems (editing, benchmarks, the demo world).

They sit above both the engine (``editing``, ``stylegan``, ``formats``) and the demo world, so
the engine never imports the demo world; ``coral_core.cli`` imports them to register them."""
