"""Every ``coral`` sub-command, one module per subject: ``models`` (info, convert, generate),
``edit`` (train, apply, masks, bench), ``world`` (world, demo, eval), ``invert`` and ``queue``.

Each module has ``register(sub)``, which adds its sub-parsers and sets each one's ``run``;
``coral_core.cli`` lists the modules explicitly. They sit above both the engine and the demo
world, so the engine never imports the demo world, and they never import the CLI back."""
